// The demo page: asks the demo backend for a device token, then uses Bandwidth's unmodified
// browser SDK against patchbay's device WebSocket.
import * as sdk from "@bandwidth/webrtc-browser";

const BandwidthRtc = typeof sdk.default === "function" ? sdk.default : sdk.default.default;
const $ = (id) => document.getElementById(id);
let rtc;

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
  const { token, websocketUrl } = await res.json();
  rtc = new BandwidthRtc("warn");
  rtc.onStreamAvailable((s) => show(s.mediaStream, `participant ${s.participantId.slice(0, 8)} (${s.alias ?? "no alias"})`, false));
  rtc.onStreamUnavailable((id) => document.getElementById(`stream-${id}`)?.remove());
  await rtc.connect({ deviceToken: token }, { websocketUrl });
  const mine = await rtc.publish({ audio: true, video: true }, undefined, "camera");
  show(mine.mediaStream, "you", true);
  $("status").textContent = `in the room as ${$("name").value}`;
  $("leave").disabled = false;
};

$("leave").onclick = () => {
  rtc?.disconnect();
  $("videos").replaceChildren();
  $("status").textContent = "left";
  $("leave").disabled = true;
  $("join").disabled = false;
};
