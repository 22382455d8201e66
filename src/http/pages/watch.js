// The watch page: a viewer of one room, speaking the client protocol (docs/protocol.md)
// exactly as an app does. It opens /ws with a login token, enters the room with command
// 40 (type 1, a viewer), and draws the PK only from what the protocol gives a viewer: the
// reply's PK state, push 10 and push 15. Time left ticks from the PK's `endTime` on the
// node's clock, which command 44 (heartbeat) tells.

import { el, fill, phase, result, scoreboard } from "./render.js";

const HEARTBEAT_MS = 20_000;
const FRAMES_KEPT = 40;
const TOKEN_KEY = "pkd.watch.token";

const page = {
  room: null,
  token: null,
  socket: null,
  sequence: 0,
  /** Command id and send time of each command awaiting its reply, by sequence. */
  pending: new Map(),
  /** The node's clock minus this browser's, from the last heartbeat. */
  offset: 0,
  /** The room's PK as last told (a push 10's content), or null. */
  state: null,
  closed: false,
  retry: 500,
  heartbeat: null,
};

const $ = (id) => document.getElementById(id);

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
  document.body.dataset.error = text ? "1" : "";
}

function badge(text, on) {
  const b = $("connection");
  b.textContent = text;
  b.className = `badge ${on ? "on" : "off"}`;
}

function logFrame(direction, text) {
  const list = $("frame-log");
  list.prepend(el("li", { class: direction }, el("b", {}, direction === "in" ? "←" : "→"), " ", text.slice(0, 400)));
  while (list.children.length > FRAMES_KEPT) list.lastChild.remove();
}

function send(commandId, fields = "") {
  if (!page.socket || page.socket.readyState !== WebSocket.OPEN) return;
  page.sequence += 1;
  // Written by hand so that ids keep every digit (JSON numbers in JavaScript hold 53 bits).
  const text = `{"commandId":${commandId},"msgType":"command","sequence":${page.sequence}${fields}}`;
  page.pending.set(page.sequence, { commandId, sentAt: Date.now() });
  page.socket.send(text);
  logFrame("out", text);
}

function nodeNow() {
  return Date.now() + page.offset;
}

function draw() {
  const board = $("board");
  if (!page.state) {
    fill(board, el("p", { class: "empty" }, page.socket ? "No PK in this room right now: waiting for one." : "…"));
    return;
  }
  fill(board, scoreboard(page.state, nodeNow()));
}

function onReply(reply) {
  const asked = page.pending.get(reply.sequence);
  page.pending.delete(reply.sequence);
  if (reply.code !== "000000") {
    showError(`Command ${-reply.commandId} refused: ${reply.code} ${reply.desc}`);
    return;
  }
  if (reply.commandId === -44 && asked && typeof reply.result === "number") {
    const now = Date.now();
    page.offset = Math.round(reply.result - (asked.sentAt + now) / 2);
  }
  if (reply.commandId === -40 || reply.commandId === -42) {
    page.state = reply.result ?? null;
    page.closed = false;
    $("note").textContent = page.state ? "" : "The room is in no PK.";
  }
}

function onPush(push) {
  if (push.type === 10) {
    page.state = push.content;
    page.closed = false;
    const outcome = result(push.content);
    $("note").textContent = outcome ? `Result: ${outcome}.` : "";
  } else if (push.type === 15) {
    page.closed = true;
    const outcome = page.state ? result(page.state) : null;
    $("note").textContent = `PK ${push.content.pkId} closed (${phase(push.content.status)})${outcome ? `: ${outcome}` : ""}.`;
    document.body.dataset.closed = String(push.content.pkId);
  }
}

/** Why a socket that never opened failed: a refused token (401), or no answer at all. */
async function whyRefused() {
  try {
    const answer = await fetch("/api/rooms-in-pk", { headers: { Authorization: `Bearer ${page.token}` } });
    return answer.status === 401 ? "refused" : "other";
  } catch {
    return "unreachable";
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(page.token)}`);
  page.socket = socket;
  let opened = false;
  badge("connecting…", false);
  socket.addEventListener("open", () => {
    opened = true;
    page.retry = 500;
    showError("");
    badge("connected", true);
    send(44);
    send(40, `,"roomId":${page.room},"type":1`);
    page.heartbeat = setInterval(() => send(44), HEARTBEAT_MS);
  });
  socket.addEventListener("message", (event) => {
    logFrame("in", String(event.data));
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.msgType === "command") onReply(message);
    else if (message.msgType === "pub") onPush(message);
    draw();
  });
  socket.addEventListener("close", async (event) => {
    clearInterval(page.heartbeat);
    page.socket = null;
    badge("disconnected", false);
    if (!opened) {
      const why = await whyRefused();
      if (why === "refused") {
        page.state = null;
        $("room").hidden = true;
        showError("The node refused the login token (HTTP 401): check the token and try again.");
        $("join").hidden = false;
        return;
      }
    }
    if (event.code === 4001) {
      $("room").hidden = true;
      showError("The login token expired: enter a fresh one.");
      $("join").hidden = false;
      return;
    }
    showError(`Connection closed (${event.code || "no answer"}); reconnecting…`);
    setTimeout(connect, page.retry);
    page.retry = Math.min(page.retry * 2, 10_000);
  });
}

function start() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    // Kept for this tab only, and taken out of the address bar and its history.
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}?${params}`);
  }
  page.token = sessionStorage.getItem(TOKEN_KEY);
  page.room = params.get("room");
  const form = $("join");
  form.room.value = page.room ?? "";
  form.token.value = page.token ?? "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, form.token.value.trim());
    location.search = `?room=${encodeURIComponent(form.room.value.trim())}`;
  });
  if (!page.token || !/^[1-9][0-9]{0,18}$/.test(page.room ?? "")) {
    form.hidden = false;
    if (page.room && !/^[1-9][0-9]{0,18}$/.test(page.room)) showError(`"${page.room}" is not a room id.`);
    return;
  }
  $("room").hidden = false;
  $("room-title").textContent = `Room ${page.room}`;
  document.title = `pkd · room ${page.room}`;
  draw();
  connect();
  setInterval(draw, 250);
}

start();
