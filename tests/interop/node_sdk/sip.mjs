// A minimal SIP user agent over UDP (RFC 3261, just what one dial-in needs): the INVITE that
// Bandwidth Voice sends after the SDK's transfer BXML, with the BXML's `uui` as the
// `User-To-User` header, then ACK, and BYE for an answered call. Node's standard library only.
//
//   const call = await dial({ server: "127.0.0.1:5060", requestUri: "sip:...", uui });
//   call.status            final status of the INVITE (200, 403, ...)
//   call.final             that response: { status, reason, headers (lower-case names), body }
//   await call.hangUp()    BYE (answered calls) -> the BYE's final response
//   call.close()           sockets closed (hangUp does it too)

import { randomBytes } from "node:crypto";
import dgram from "node:dgram";

const COMPACT = { v: "via", f: "from", t: "to", i: "call-id", m: "contact", l: "content-length", c: "content-type" };

export function parseSip(text) {
  const split = text.indexOf("\r\n\r\n");
  const head = split < 0 ? text : text.slice(0, split);
  const body = split < 0 ? "" : text.slice(split + 4);
  const [first, ...lines] = head.split("\r\n");
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    let name = line.slice(0, colon).trim().toLowerCase();
    name = COMPACT[name] || name;
    (headers[name] ||= []).push(line.slice(colon + 1).trim());
  }
  const status = first.match(/^SIP\/2\.0 (\d{3}) ?(.*)$/);
  if (status) return { kind: "response", status: Number(status[1]), reason: status[2], headers, body };
  const req = first.match(/^([A-Z]+) (\S+) SIP\/2\.0$/);
  return { kind: "request", method: req?.[1], uri: req?.[2], headers, body };
}

const token = () => randomBytes(6).toString("hex");

export async function dial({ server, requestUri, uui, from = "+19195550100", timeoutMs = 15000 }) {
  const [host, portText] = server.split(":");
  const port = Number(portText);
  const sock = dgram.createSocket("udp4");
  const rtp = dgram.createSocket("udp4"); // where the server may send RTP (ignored)
  await new Promise((r) => sock.bind(0, "127.0.0.1", r));
  await new Promise((r) => rtp.bind(0, "127.0.0.1", r));
  rtp.on("message", () => {});
  const local = `127.0.0.1:${sock.address().port}`;
  const callId = `${token()}@node-sdk-test`;
  const fromTag = token();
  const fromHdr = `<sip:${from}@${local}>;tag=${fromTag}`;
  const send = (text) => new Promise((resolve, reject) => sock.send(Buffer.from(text), port, host, (e) => (e ? reject(e) : resolve())));

  const waiters = [];
  const log = [];
  sock.on("message", (buf) => {
    const msg = parseSip(buf.toString("utf8"));
    log.push(msg);
    if (msg.kind === "request") {
      // Answer whatever the server asks in the dialog (e.g. its BYE) with 200.
      if (msg.method !== "ACK") {
        const h = msg.headers;
        send(["SIP/2.0 200 OK", ...(h.via || []).map((v) => `Via: ${v}`), `From: ${h.from?.[0]}`, `To: ${h.to?.[0]}`,
          `Call-ID: ${h["call-id"]?.[0]}`, `CSeq: ${h.cseq?.[0]}`, "Content-Length: 0", "", ""].join("\r\n")).catch(() => {});
      }
      return;
    }
    for (const w of [...waiters]) if (w.match(msg)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg); }
  });
  const close = () => {
    try { sock.close(); } catch {}
    try { rtp.close(); } catch {}
  };

  /** Sends `text` (retransmitting every 500 ms until any response of CSeq `cseq`) -> its final response. */
  function transaction(text, cseq) {
    return new Promise((resolve, reject) => {
      let answered = false;
      const isOurs = (m) => m.headers.cseq?.[0] === cseq && m.headers["call-id"]?.[0] === callId;
      const timer = setTimeout(() => {
        clearInterval(retrans);
        reject(new Error(`no final response to ${cseq} within ${timeoutMs} ms; received: ${JSON.stringify(log.map((m) => m.status || m.method))}`));
      }, timeoutMs);
      const retrans = setInterval(() => { if (!answered) send(text).catch(() => {}); }, 500);
      waiters.push({ match: (m) => { if (isOurs(m)) answered = true; return isOurs(m) && m.status >= 200; }, resolve: (m) => { clearTimeout(timer); clearInterval(retrans); resolve(m); } });
      send(text).catch(reject);
    });
  }

  const sdp = ["v=0", `o=- ${Date.now()} 1 IN IP4 127.0.0.1`, "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
    `m=audio ${rtp.address().port} RTP/AVP 0 8 101`, "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:20", "a=sendrecv", ""].join("\r\n");
  const inviteBranch = `z9hG4bK${token()}`;
  const invite = [
    `INVITE ${requestUri} SIP/2.0`,
    `Via: SIP/2.0/UDP ${local};branch=${inviteBranch};rport`,
    "Max-Forwards: 70",
    `From: ${fromHdr}`,
    `To: <${requestUri}>`,
    `Call-ID: ${callId}`,
    "CSeq: 1 INVITE",
    `Contact: <sip:${from}@${local}>`,
    "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS",
    ...(uui === undefined ? [] : [`User-To-User: ${uui}`]),
    "Content-Type: application/sdp",
    `Content-Length: ${Buffer.byteLength(sdp)}`,
    "",
    sdp,
  ].join("\r\n");

  let final;
  try {
    final = await transaction(invite, "1 INVITE");
  } catch (e) {
    close();
    throw e;
  }
  const toHdr = final.headers.to?.[0] || `<${requestUri}>`;
  const remoteTarget = (final.headers.contact?.[0] || "").match(/<([^>]+)>/)?.[1] || requestUri;

  if (final.status >= 300) {
    // The ACK of a non-2xx final response is part of the INVITE transaction (same branch).
    await send([`ACK ${requestUri} SIP/2.0`, `Via: SIP/2.0/UDP ${local};branch=${inviteBranch};rport`, "Max-Forwards: 70",
      `From: ${fromHdr}`, `To: ${toHdr}`, `Call-ID: ${callId}`, "CSeq: 1 ACK", "Content-Length: 0", "", ""].join("\r\n"));
    close();
    return { status: final.status, final, hangUp: async () => null, close: () => {} };
  }

  await send([`ACK ${remoteTarget} SIP/2.0`, `Via: SIP/2.0/UDP ${local};branch=z9hG4bK${token()};rport`, "Max-Forwards: 70",
    `From: ${fromHdr}`, `To: ${toHdr}`, `Call-ID: ${callId}`, "CSeq: 1 ACK", "Content-Length: 0", "", ""].join("\r\n"));
  let hungUp = false;
  return {
    status: final.status,
    final,
    async hangUp() {
      if (hungUp) return null;
      hungUp = true;
      try {
        return await transaction([`BYE ${remoteTarget} SIP/2.0`, `Via: SIP/2.0/UDP ${local};branch=z9hG4bK${token()};rport`, "Max-Forwards: 70",
          `From: ${fromHdr}`, `To: ${toHdr}`, `Call-ID: ${callId}`, "CSeq: 2 BYE", "Content-Length: 0", "", ""].join("\r\n"), "2 BYE");
      } finally {
        close();
      }
    },
    close,
  };
}
