// Shared by the console and the watch page: building DOM without markup strings (every
// text goes in as text, so a nickname cannot become HTML), formatting, and the PK
// scoreboard drawn from a push 10's content.

/** el("div", {class: "x", dataset: {pk: 3}}, "text", child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    // Through the CSSOM: the pages' content security policy refuses style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replaces the children of `parent`. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) parent.append(child);
  }
}

/** 83000 -> "1:23"; 3723000 -> "1:02:03". */
export function clock(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** A duration in words for tables: "45 s", "12 min", "3 h". */
export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

export function number(value) {
  return Number(value ?? 0).toLocaleString("en-US");
}

export function bytes(value) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = Number(value ?? 0);
  let unit = 0;
  while (v >= 1024 && unit < units.length - 1) {
    v /= 1024;
    unit += 1;
  }
  return `${v.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function time(ms) {
  return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
}

/** The `status` of push 10, in words. */
export function phase(status) {
  return ["opening", "battle", "over", "ended abnormally"][status] ?? `status ${status}`;
}

/** The winner line of a decided PK, or null while it runs. */
export function result(state) {
  if (state.winner === undefined || state.winner === null) return null;
  if (state.status === 3) return "ended abnormally: no winner";
  if (state.winner === 0) return "a draw";
  const side = state.winner === state.sourceUser ? "source" : "target";
  return `anchor ${state.winner} wins (${side})`;
}

function gifterName(entry) {
  const nickname = entry.user?.nickname;
  return nickname ? `${nickname} (${entry.user.id})` : `user ${entry.user?.id}`;
}

function side(state, which, viewers) {
  const beans = state[`${which}Gifts`];
  const online = state[`${which}Online`];
  const top = state[`${which}TopGifts`] ?? [];
  const winner = state.winner !== undefined && state.winner !== 0 && state.winner === state[`${which}User`];
  return el(
    "section",
    { class: `side ${which}${winner ? " winner" : ""}`, dataset: { side: which } },
    el(
      "header",
      {},
      el("span", { class: `dot ${online ? "on" : "off"}`, title: online ? "anchor connected" : "anchor away" }),
      el("span", { class: "anchor" }, `anchor ${state[`${which}User`]}`),
      el("span", { class: "room" }, `room ${state[`${which}Room`]}`),
    ),
    el("div", { class: "beans", dataset: { beans: beans } }, number(beans)),
    viewers === undefined ? null : el("div", { class: "viewers" }, `${number(viewers)} viewers`),
    el(
      "ol",
      { class: "gifters" },
      top.length === 0
        ? el("li", { class: "none" }, "no gifts yet")
        : top.map((entry) => el("li", {}, el("span", {}, gifterName(entry)), el("b", {}, number(entry.consume)))),
    ),
  );
}

/**
 * A PK's scoreboard from a push 10's content, as it stands at `nowMs` (the node's clock):
 * both sides, the score bar, the phase, the time left (from `endTime`, never from
 * `remainingTime`, which was right only at the push's `version`), and the result.
 */
export function scoreboard(state, nowMs, viewers) {
  const total = state.sourceGifts + state.targetGifts;
  const share = total === 0 ? 50 : (100 * state.sourceGifts) / total;
  const running = state.status === 0 || state.status === 1;
  const left = running ? clock(state.endTime - nowMs) : "0:00";
  const outcome = result(state);
  return el(
    "div",
    { class: "scoreboard", dataset: { pk: state.pkId, status: state.status } },
    el(
      "div",
      { class: "meta" },
      el("span", { class: `phase p${state.status}`, dataset: { phase: state.status } }, phase(state.status)),
      el("span", { class: "pkid" }, `PK ${state.pkId}`),
      el("span", { class: "left", dataset: { left: Math.max(0, Math.round(state.endTime - nowMs)) } }, `${left} left`),
    ),
    el(
      "div",
      { class: "sides" },
      side(state, "source", viewers?.[0]),
      el("div", { class: "versus" }, "VS"),
      side(state, "target", viewers?.[1]),
    ),
    el(
      "div",
      { class: "bar", role: "img", "aria-label": `score ${state.sourceGifts} to ${state.targetGifts}` },
      el("div", { class: "fill source", style: { width: `${share.toFixed(1)}%` } }),
      el("div", { class: "fill target", style: { width: `${(100 - share).toFixed(1)}%` } }),
    ),
    outcome ? el("div", { class: "result", dataset: { winner: state.winner } }, outcome) : null,
  );
}
