// The demo page: asks the demo backend for a device token, then uses Bandwidth's unmodified
// browser SDK against patchbay's device WebSocket.
import * as sdk from "@bandwidth/webrtc-browser";

const BandwidthRtc = typeof sdk.default === "function" ? sdk.default : sdk.default.default;
const $ = (id) => document.getElementById(id);
let rtc;
let participantId;

/** The name a participant joined with, as the demo backend knows it (else its id's start). */
async function nameOf(id) {
  try {
    const names = await (await fetch("/names")).json();
    if (names[id]) return names[id];
  } catch {
    // fall through
  }
  return `participant ${id.slice(0, 8)}`;
}

/** Tells the backend this page leaves: it deletes the participant (and frees its seat). */
function leaveRoom(beacon) {
  if (!participantId) return;
  const body = JSON.stringify({ participantId });
  participantId = undefined;
  if (beacon) navigator.sendBeacon("/leave", body);
  else fetch("/leave", { method: "POST", body, keepalive: true }).catch(() => {});
}

function show(stream, label, muted) {
  const figure = document.createElement("figure");
  figure.id = `stream-${stream.id}`;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = muted;
  video.srcObject = stream;
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  figure.append(video, caption);
  $("videos").append(figure);
}

$("join").onclick = async () => {
  $("join").disabled = true;
  $("status").textContent = "joining…";
  const res = await fetch("/join", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: $("name").value }),
  });
  if (!res.ok) {
    $("status").textContent = `join failed: ${await res.text()}`;
    $("join").disabled = false;
    return;
  }
  const joined = await res.json();
  participantId = joined.participantId;
  rtc = new BandwidthRtc("warn");
  rtc.onStreamAvailable(async (s) => show(s.mediaStream, `${await nameOf(s.participantId)} (${s.alias ?? "no alias"})`, false));
  rtc.onStreamUnavailable((id) => document.getElementById(`stream-${id}`)?.remove());
  await rtc.connect({ deviceToken: joined.token }, { websocketUrl: joined.websocketUrl });
  const mine = await rtc.publish({ audio: true, video: true }, undefined, "camera");
  show(mine.mediaStream, "you", true);
  $("status").textContent = `in the room as ${$("name").value}`;
  $("leave").disabled = false;
};

$("leave").onclick = () => {
  rtc?.disconnect();
  leaveRoom(false);
  $("videos").replaceChildren();
  $("status").textContent = "left";
  $("leave").disabled = true;
  $("join").disabled = false;
};

// A closed or reloaded tab leaves too.
window.addEventListener("pagehide", () => leaveRoom(true));
