// The operator page: draws the backend's /api/state (members with live state from webhooks,
// each listener's rule as the backend keeps it, the active preset, and patchbay's compiled
// routes) every second; clicks go to /api/wire (one cell: a change in that listener's rule) and
// /api/preset (the whole session, one batch PUT).
const $ = (id) => document.getElementById(id);
let state = null;
let busy = false;

function el(tag, { dataset = {}, ...props } = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  Object.assign(e.dataset, dataset);
  for (const c of children) e.append(c);
  return e;
}

const badge = (text, cls = "") => el("span", { className: `badge ${cls}`, textContent: text });

async function post(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
}

// What `listener` receives from `speaker` according to the routes: null, or { cause, aliases }.
function link(listener, speaker) {
  const sub = state.routes.subscribers.find((s) => s.participantId === listener);
  const r = sub && sub.receives.find((p) => p.publisherId === speaker);
  return r ? { cause: r.cause, aliases: r.streamAliases || [], streams: r.streams } : null;
}

// The aliases a speaker has: published now, or named by someone's rule.
function aliasesOf(speaker) {
  const m = state.members.find((x) => x.id === speaker);
  const out = new Set((m?.streams || []).map((s) => s.alias).filter(Boolean));
  for (const sub of state.routes.subscribers)
    for (const r of sub.receives) if (r.publisherId === speaker) for (const a of r.streamAliases || []) out.add(a);
  return [...out].sort();
}

async function act(what, fn) {
  if (busy) return;
  busy = true;
  $("preset-status").textContent = `${what}…`;
  try {
    await fn();
    $("preset-status").textContent = `${what}: applied`;
  } catch (e) {
    $("preset-status").textContent = `${what} failed: ${e.message}`;
  } finally {
    busy = false;
    refresh();
  }
}

function drawPeople() {
  const body = $("people").tBodies[0];
  body.replaceChildren(
    ...state.members.map((m) => {
      // patchbay's dominant speaker, browsers and phones alike.
      const speaking = badge("speaking", m.speaking ? "talk" : "");
      const quality = badge(`quality: ${m.quality ?? "n/a"}`, m.quality ? `q-${m.quality}` : "");
      return el(
        "tr",
        { dataset: { participant: m.id } },
        el("td", {}, el("b", { textContent: m.name ?? "?" }), el("div", { className: "role", textContent: m.id.slice(0, 8) })),
        el("td", { textContent: m.role ?? "?" }),
        el("td", { textContent: m.phone ? "phone" : "browser" }),
        el("td", {}, badge(m.connected ? "connected" : "not connected", m.connected ? "on" : ""), speaking, quality),
        el("td", {}, ...(m.streams.length ? m.streams.map((s) => badge(s.alias ?? "(no alias)", "on")) : [badge("nothing")])),
        el("td", {}, el("button", { textContent: "remove", title: "delete the participant (hangs a phone up)", onclick: () => act(`remove ${m.name}`, () => post("/api/leave", { participantId: m.id })) }))
      );
    })
  );
}

const nameOf = (id) => state.members.find((m) => m.id === id)?.name ?? id.slice(0, 8);

// A listener's rule, on its row header: its default (which also decides about later joiners)
// and the changes clicked on top of it.
function ruleOf(listener) {
  const r = listener.rule;
  if (!r) return el("div", { className: "rule", textContent: "not wired by this switchboard" });
  const later = r.default === "barge" ? "hears later joiners" : `hears later joiners as the ${r.default} preset says`;
  const changes = r.changes.map((c) => {
    const what = c.hears === "nothing" ? "nothing" : c.hears === "all" ? "everything" : `only ${c.hears.join(", ")}`;
    return `${what} of ${c.speakerName ?? nameOf(c.speaker)}`;
  });
  const title = [r.sessionWide ? "session-wide rule: " + later : later, ...changes.map((c) => `changed: ${c}`)].join("\n");
  return el("div", { className: `rule ${r.changes.length ? "changed" : ""}`, textContent: r.summary, title });
}

function drawMatrix() {
  const ms = state.members;
  const head = el("tr", {}, el("th", { innerHTML: "hears &rarr;" }), ...ms.map((m) => el("th", {}, el("b", { textContent: m.name ?? "?" }), el("div", { className: "role", textContent: m.role ?? "" }))));
  const rows = ms.map((listener) =>
    el(
      "tr",
      {},
      el(
        "th",
        { className: "listener", dataset: { listener: listener.id, sessionWide: String(!!listener.rule?.sessionWide), changes: String(listener.rule?.changes.length ?? 0) } },
        el("b", { textContent: listener.name ?? "?" }),
        el("div", { className: "role", textContent: listener.role ?? "" }),
        ruleOf(listener)
      ),
      ...ms.map((speaker) => {
        if (speaker.id === listener.id) return el("td", { className: "self", textContent: "—" });
        const l = link(listener.id, speaker.id);
        const on = !!l;
        const button = el(
          "button",
          {
            className: `wire ${on ? "on" : "off"}`,
            title: on ? `forwarded because of a ${l.cause} rule; click to stop` : "not wired; click to wire",
            onclick: () => act(`${listener.name} ${on ? "stops hearing" : "hears"} ${speaker.name}`, () => post("/api/wire", { listener: listener.id, speaker: speaker.id, on: !on })),
          },
          on ? "hears" : "—",
          el("span", { className: "cause", textContent: on ? `${l.cause} rule` : "" })
        );
        const chips = aliasesOf(speaker.id).map((alias) => {
          const hearsAlias = on && (l.aliases.length === 0 || l.aliases.includes(alias));
          return el("button", {
            className: `chip ${hearsAlias ? "on" : ""}`,
            textContent: alias,
            title: `stream alias ${alias}: click to ${hearsAlias ? "stop" : "start"}`,
            onclick: () => act(`${listener.name} ${hearsAlias ? "stops hearing" : "hears"} ${speaker.name}'s ${alias}`, () => post("/api/wire", { listener: listener.id, speaker: speaker.id, alias, on: !hearsAlias })),
          });
        });
        return el("td", { className: "cell", dataset: { listener: listener.id, speaker: speaker.id, on: String(on) } }, button, el("div", { className: "chips" }, ...chips));
      })
    )
  );
  $("matrix").replaceChildren(head, ...rows);
}

const PRESETS = ["monitor", "whisper", "barge"];

// The active preset's button is pressed; after a clicked change none is ("custom").
function drawPresets() {
  for (const p of PRESETS) {
    const b = $(`preset-${p}`);
    b.classList.toggle("active", state.preset === p);
    b.setAttribute("aria-pressed", String(state.preset === p));
  }
  const label = (p) => p[0].toUpperCase() + p.slice(1);
  $("preset-active").textContent = state.preset
    ? `active: ${label(state.preset)}`
    : `active: custom (clicked changes on top of ${label(state.newcomers)}; newcomers join as ${label(state.newcomers)} says)`;
  $("preset-active").dataset.preset = state.preset ?? "custom";
}

async function refresh() {
  try {
    const res = await fetch("/api/state");
    if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
    state = await res.json();
    // callers first, then agents, then supervisors (patchbay lists members in id order)
    const rank = { caller: 0, agent: 1, supervisor: 2 };
    state.members.sort((a, b) => (rank[a.role] ?? 3) - (rank[b.role] ?? 3) || String(a.name).localeCompare(String(b.name)));
  } catch (e) {
    $("webhooks").textContent = `backend unreachable: ${e.message}`;
    return;
  }
  if (state.sessionId) $("session").textContent = state.sessionId;
  const w = state.webhooks;
  $("webhooks").className = w.verified ? "" : "bad";
  $("webhooks").textContent = `${w.verified ? "signature-checked" : "NOT verified (no --webhook-secret)"}: ${w.accepted} accepted, ${w.rejected} rejected`;
  drawPresets();
  drawPeople();
  drawMatrix();
  document.body.dataset.members = String(state.members.length);
}

for (const preset of PRESETS) {
  $(`preset-${preset}`).onclick = () => act(preset, () => post("/api/preset", { preset }));
}

$("phone").onclick = async () => {
  const res = await fetch("/api/phone", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: $("phone-name").value, role: $("phone-role").value }) });
  if (!res.ok) {
    $("phone-out").textContent = `failed: ${await res.text()}`;
    return;
  }
  const p = await res.json();
  $("phone-out").replaceChildren("Dial in with the test phone: ", el("code", { textContent: p.command }), el("br"), `or send an INVITE with User-To-User: ${p.userToUser.slice(0, 24)}… (see examples/dial-in.md)`);
  refresh();
};

refresh();
setInterval(refresh, 1000);
