// A participant tab: gets a device token from the switchboard backend, joins with Bandwidth's
// unmodified browser SDK, publishes its microphone (or a test tone) as the stream alias
// "voice" and plays what patchbay forwards; patchbay itself finds who is speaking (the
// operator's "speaking" light). Leave deletes the participant.
import * as sdk from "@bandwidth/webrtc-browser";

const BandwidthRtc = typeof sdk.default === "function" ? sdk.default : sdk.default.default;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
for (const key of ["name", "role", "tone"]) if (params.has(key)) $(key).value = params.get(key);
if (params.get("camera") === "1") $("camera").checked = true;

let rtc = null;
let me = null; // participant id
let audio = null; // AudioContext
const names = new Map(); // participant id -> name, from the backend

async function post(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

async function nameOf(participantId) {
  if (!names.has(participantId)) {
    const state = await (await fetch("/api/state")).json();
    for (const m of state.members) names.set(m.id, m.name || m.id.slice(0, 8));
  }
  return names.get(participantId) || participantId.slice(0, 8);
}

// The microphone, or an oscillator at `hz` when a tone is asked for.
async function voice(hz) {
  if (!hz) return navigator.mediaDevices.getUserMedia({ audio: true });
  const osc = audio.createOscillator();
  osc.frequency.value = hz;
  const gain = audio.createGain();
  gain.gain.value = 0.3;
  const out = audio.createMediaStreamDestination();
  osc.connect(gain).connect(out);
  osc.start();
  return out.stream;
}

async function onStream(rtcStream) {
  const li = document.createElement("li");
  li.id = `stream-${rtcStream.endpointId}`;
  li.textContent = `${await nameOf(rtcStream.participantId)} (${rtcStream.alias ?? "no alias"})`;
  $("hearing").append(li);
  const el = document.createElement(rtcStream.mediaTypes.includes("VIDEO") ? "video" : "audio");
  el.id = `media-${rtcStream.endpointId}`;
  el.autoplay = true;
  el.srcObject = rtcStream.mediaStream;
  $("media").append(el);
}

function offStream(endpointId) {
  document.getElementById(`stream-${endpointId}`)?.remove();
  document.getElementById(`media-${endpointId}`)?.remove();
}

$("join").onclick = async () => {
  $("join").disabled = true;
  $("status").textContent = "joining…";
  try {
    audio = audio || new AudioContext();
    await audio.resume();
    const joined = await post("/api/join", { name: $("name").value, role: $("role").value });
    me = joined.participantId;
    rtc = new BandwidthRtc("warn");
    rtc.onStreamAvailable((s) => onStream(s));
    rtc.onStreamUnavailable((id) => offStream(id));
    await rtc.connect({ deviceToken: joined.token }, { websocketUrl: joined.websocketUrl });
    const mine = await voice(Number($("tone").value) || 0);
    await rtc.publish(mine, undefined, "voice");
    if ($("camera").checked) {
      await rtc.publish(await navigator.mediaDevices.getUserMedia({ video: true }), undefined, "camera");
    }
    $("status").textContent = `joined as ${$("name").value} (${$("role").value})`;
    $("status").dataset.state = "joined";
    $("leave").disabled = false;
  } catch (e) {
    $("status").textContent = `join failed: ${e.message || e}`;
    $("join").disabled = false;
  }
};

async function leave() {
  rtc?.disconnect();
  rtc = null;
  const id = me;
  me = null;
  $("hearing").replaceChildren();
  $("media").replaceChildren();
  $("leave").disabled = true;
  if (id) await post("/api/leave", { participantId: id }).catch(() => {});
  $("status").textContent = "left";
  $("status").dataset.state = "left";
  $("join").disabled = false;
}

$("leave").onclick = leave;
// Closing the tab leaves too, so the session never fills up with ghosts.
addEventListener("pagehide", () => {
  if (me) navigator.sendBeacon("/api/leave", JSON.stringify({ participantId: me }));
});
