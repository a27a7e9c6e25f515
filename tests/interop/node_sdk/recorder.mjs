// A recording HTTP proxy on 127.0.0.1: every request is forwarded unchanged to `target` (the
// patchbay URL) and its method, path, headers and exact body bytes are kept, with the status
// patchbay answered. Points the SDK at it to learn exactly what the SDK puts on the wire.
//
//   const rec = await startRecorder("http://127.0.0.1:PORT");
//   ... SDK with baseUrl rec.url + "/v1" ...
//   rec.take()  -> [{ method, path, headers, body, status }] since the last take()
//   await rec.stop()

import http from "node:http";

export async function startRecorder(target) {
  const upstream = new URL(target);
  let seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const entry = { method: req.method, path: req.url, headers: { ...req.headers }, body: body.toString("utf8"), status: null };
      seen.push(entry);
      const headers = { ...req.headers, host: upstream.host };
      const out = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
        (up) => {
          entry.status = up.statusCode;
          res.writeHead(up.statusCode, up.headers);
          up.pipe(res);
        }
      );
      out.on("error", (e) => {
        entry.status = 502;
        res.writeHead(502, { "content-type": "text/plain" });
        res.end(`recorder: ${e.message}`);
      });
      out.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    take() {
      const t = seen;
      seen = [];
      return t;
    },
    stop: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
