// The pkd console: log in with the admin token, then watch the cluster live and act on it.
// Everything comes from the admin API of the node that served this page; that node asks
// the others. Live data comes over the event feed (/admin/events); when the feed cannot
// be held, the console polls the same data every two seconds and tries the feed again.

import { Api, ApiError } from "./api.js";
import { History, PALETTE, drawLines } from "./charts.js";
import { ago, bytes, clock, el, fill, number, phase, result, scoreboard, time } from "./render.js";

const TOKEN_KEY = "pkd.console.token";
const OPERATOR_KEY = "pkd.console.operator";
const POLL_MS = 2_000;
const RETRY_FEED_MS = 10_000;
const CHART_SPAN = 180_000;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const data = {
  cluster: null,
  pks: null,
  lobby: null,
  audit: [],
  auditSeq: 0,
  /** The node's clock minus this browser's. */
  offset: 0,
  /** The previous report of each node, for rates. */
  previous: new Map(),
};
const history = new History(CHART_SPAN);
let api = null;
let feed = null;

// ---- small helpers ----------------------------------------------------------------------

function nodeNow() {
  return Date.now() + data.offset;
}

function toast(text, bad = false) {
  const box = $("toast");
  box.textContent = text;
  box.className = `toast${bad ? " bad" : ""}`;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    box.hidden = true;
  }, 6_000);
}

function setFeed(text, kind) {
  const badge = $("feed");
  badge.hidden = false;
  badge.textContent = text;
  badge.className = `badge ${kind}`;
  document.body.dataset.feed = text;
}

/** Asks the operator to confirm `text`; resolves to true or false. */
function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false);
    dialog.showModal();
  });
}

/** Confirms, runs `call`, reports how it went, and fetches the audit log at once. */
async function act(description, call) {
  if (!(await confirmAction(`${description}?`))) return false;
  try {
    await call();
    toast(`Done: ${description}.`);
    return true;
  } catch (error) {
    toast(`Failed: ${description}: ${error.message}`, true);
    return false;
  } finally {
    await refreshAudit();
  }
}

function reports() {
  return (data.cluster?.nodes ?? []).filter((node) => node.report).map((node) => node.report);
}

function groupIds() {
  const ids = new Set();
  for (const report of reports()) for (const group of report.status.groups) ids.add(group.id);
  return [...ids].sort((a, b) => a - b);
}

/** Group `id`'s leader: the node that says it leads, else the one most nodes name. */
function leaderOf(id) {
  const counts = new Map();
  for (const report of reports()) {
    const group = report.status.groups.find((g) => g.id === id);
    if (!group || group.leader === null || group.leader === undefined) continue;
    if (group.leader === report.status.node) return group.leader;
    counts.set(group.leader, (counts.get(group.leader) ?? 0) + 1);
  }
  let best = null;
  for (const [node, count] of counts) if (best === null || count > counts.get(best)) best = node;
  return best;
}

/** Group `id` as its leader reports it (with lag), else as any node does. */
function groupView(id) {
  const leader = leaderOf(id);
  let any = null;
  for (const report of reports()) {
    const group = report.status.groups.find((g) => g.id === id);
    if (!group) continue;
    if (report.status.node === leader) return group;
    any = any ?? group;
  }
  return any;
}

function members() {
  return (data.cluster?.nodes ?? []).map((node) => node.node);
}

function legend(names) {
  return el(
    "div",
    { class: "legend" },
    names.map((name, i) => el("span", {}, el("i", { style: { background: PALETTE[i % PALETTE.length] } }), name)),
  );
}

function chartCard(title, canvasId, legendId) {
  return el(
    "div",
    { class: "card" },
    el("h3", {}, title),
    el("canvas", { id: canvasId, class: "chart" }),
    el("div", { id: legendId }),
  );
}

function drawChart(canvasId, legendId, prefix, labelOf, unit = "", floor = 1) {
  const canvas = $(canvasId);
  if (!canvas) return;
  const names = history.names(prefix);
  drawLines(
    canvas,
    names.map((name) => ({ label: labelOf(name.slice(prefix.length)), points: history.get(name) })),
    { now: nodeNow(), span: CHART_SPAN, unit, floor },
  );
  fill($(legendId), legend(names.map((name) => labelOf(name.slice(prefix.length)))));
}

// ---- incoming data ---------------------------------------------------------------------

/** Records rates for the charts from a new cluster status. */
function sample(cluster) {
  const totals = { pushes: 0, gifts: 0 };
  let counted = false;
  for (const node of cluster.nodes) {
    const report = node.report;
    if (!report) continue;
    const before = data.previous.get(node.node);
    data.previous.set(node.node, report);
    if (!before || report.at_ms <= before.at_ms) continue;
    const seconds = (report.at_ms - before.at_ms) / 1000;
    const rate = (key) => Math.max(0, (report.gateway[key] - before.gateway[key]) / seconds);
    history.add(`pushes:${node.node}`, report.at_ms, rate("pushes"));
    history.add(`gifts:${node.node}`, report.at_ms, rate("gifts"));
    totals.pushes += rate("pushes");
    totals.gifts += rate("gifts");
    counted = true;
    for (const group of report.status.groups) {
      if (group.leader !== report.status.node) continue;
      const old = before.status.groups.find((g) => g.id === group.id);
      if (old && old.leader === group.leader) {
        history.add(`commits:${group.id}`, report.at_ms, Math.max(0, (group.committed - old.committed) / seconds));
      }
      const lag = Math.max(0, ...group.replication.map((member) => member.lag));
      history.add(`lag:${group.id}`, report.at_ms, lag);
    }
  }
  if (counted) {
    history.add("total:pushes/s", cluster.at_ms, totals.pushes);
    history.add("total:gifts/s", cluster.at_ms, totals.gifts);
  }
}

function onEvent(name, value) {
  if (name === "cluster") {
    data.cluster = value;
    sample(value);
  } else if (name === "pks") {
    data.pks = value;
    data.offset = value.at_ms - Date.now();
  } else if (name === "lobby") {
    data.lobby = value;
  } else if (name === "audit") {
    addAudit(value.entries);
  }
  pages[current.name]?.update?.();
}

function addAudit(entries) {
  for (const entry of entries) {
    if (entry.seq > data.auditSeq) {
      data.audit.push(entry);
      data.auditSeq = entry.seq;
    }
  }
  if (data.audit.length > 1000) data.audit.splice(0, data.audit.length - 1000);
}

async function refreshAudit() {
  try {
    const list = await api.get(`/admin/audit?after=${data.auditSeq}`);
    addAudit(list.entries);
    pages[current.name]?.update?.();
  } catch {
    // The feed brings it later.
  }
}

async function pollOnce() {
  const [cluster, pks, lobby, audit] = await Promise.all([
    api.get("/admin/cluster"),
    api.get("/admin/pks"),
    api.get("/admin/lobby"),
    api.get(`/admin/audit?after=${data.auditSeq}`),
  ]);
  onEvent("cluster", cluster);
  onEvent("pks", pks);
  onEvent("lobby", lobby);
  onEvent("audit", audit);
}

/** Holds the live feed; falls back to polling while it cannot, then tries it again. */
async function runFeed(session) {
  while (api && feed === session) {
    session.abort = new AbortController();
    try {
      setFeed("live", "on");
      await api.stream(onEvent, session.abort.signal);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        logout("The node refused the admin token.");
        return;
      }
    }
    if (!api || feed !== session) return;
    setFeed("polling", "warn");
    const until = Date.now() + RETRY_FEED_MS;
    while (api && feed === session && Date.now() < until) {
      try {
        await pollOnce();
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          logout("The node refused the admin token.");
          return;
        }
        setFeed("offline", "off");
      }
      await sleep(POLL_MS);
    }
  }
}

// ---- pages -------------------------------------------------------------------------------

const current = { name: null, root: null };

const clusterPage = {
  mount(root) {
    fill(
      root,
      el("h2", {}, "Nodes"),
      el("div", { id: "nodes", class: "grid" }),
      el("h3", {}, "Leadership spread"),
      el("div", { class: "card" }, el("table", { id: "spread", class: "spread" })),
      el("h3", {}, "Groups"),
      el("div", { class: "card" }, el("table", { id: "groups" })),
      el(
        "div",
        { class: "grid2" },
        chartCard("Commits per second, by group (at its leader)", "chart-commits", "legend-commits"),
        chartCard("Replication lag, by group (entries, worst member)", "chart-lag", "legend-lag"),
      ),
    );
  },
  update() {
    const cluster = data.cluster;
    if (!cluster) return;
    const groups = groupIds();
    const led = new Map();
    for (const id of groups) {
      const leader = leaderOf(id);
      led.set(leader, (led.get(leader) ?? 0) + 1);
    }
    fill(
      $("nodes"),
      cluster.nodes.map((node) => {
        const report = node.report;
        const state = !report ? "down" : report.draining ? "draining" : "up";
        return el(
          "div",
          { class: `card node ${state}`, dataset: { node: node.node, state } },
          el(
            "h4",
            {},
            el("span", {}, `node ${node.node}${node.node === cluster.asked ? " (this one)" : ""}`),
            el("span", { class: `badge ${state === "up" ? "on" : state === "down" ? "off" : "warn"}` }, state),
          ),
          report
            ? el(
                "dl",
                {},
                el("dt", {}, "groups led"),
                el("dd", {}, String(led.get(node.node) ?? 0)),
                el("dt", {}, "connections"),
                el("dd", {}, number(report.gateway.connections)),
                el("dt", {}, "PKs in replicas"),
                el("dd", {}, number(report.pks_running)),
                el("dt", {}, "connected to"),
                el("dd", {}, report.status.connected.join(", ") || "-"),
                el("dt", {}, "CPU"),
                el("dd", {}, `${report.cpu_seconds.toFixed(1)} s`),
                el("dt", {}, "memory"),
                el("dd", {}, bytes(report.memory_bytes)),
              )
            : el("p", { class: "bad" }, node.error ?? "no answer"),
        );
      }),
    );
    const nodes = members();
    fill(
      $("spread"),
      el("tr", {}, el("th", {}, "group"), nodes.map((n) => el("th", { class: "num" }, `node ${n}`))),
      groups.map((id) => {
        const view = groupView(id);
        const leader = leaderOf(id);
        return el(
          "tr",
          {},
          el("td", {}, `${id} ${view?.kind ?? ""}`),
          nodes.map((n) => {
            const role =
              n === leader ? "leader" : view?.voters.includes(n) ? "voter" : view?.learners.includes(n) ? "learner" : "absent";
            const mark = { leader: "L", voter: "·", learner: "l", absent: "" }[role];
            return el("td", { class: `cell ${role}`, title: role }, mark);
          }),
        );
      }),
    );
    const reporting = cluster.nodes.filter((node) => node.report).map((node) => node.node);
    fill(
      $("groups"),
      el(
        "tr",
        {},
        ["group", "kind", "leader", "term"].map((h) => el("th", {}, h)),
        reporting.map((n) => el("th", { class: "num" }, `n${n} committed / applied`)),
        el("th", {}, "voters"),
        el("th", {}, "learners"),
        el("th", {}, "lag (at the leader)"),
      ),
      groups.map((id) => {
        const view = groupView(id);
        const leader = leaderOf(id);
        return el(
          "tr",
          { dataset: { group: id, leader: leader ?? "" } },
          el("td", {}, String(id)),
          el("td", {}, view?.kind ?? ""),
          el("td", { class: "leader" }, leader === null ? "none" : `node ${leader}`),
          el("td", { class: "num" }, String(view?.term ?? "")),
          reporting.map((n) => {
            const report = cluster.nodes.find((node) => node.node === n).report;
            const g = report.status.groups.find((x) => x.id === id);
            return el("td", { class: "num mono" }, g ? `${g.committed ?? "-"} / ${g.applied ?? "-"}` : "-");
          }),
          el("td", {}, (view?.voters ?? []).join(", ")),
          el("td", {}, (view?.learners ?? []).join(", ") || "-"),
          el("td", { class: "mono" }, (view?.replication ?? []).map((m) => `n${m.node}: ${m.lag}`).join("  ") || "-"),
        );
      }),
    );
    drawChart("chart-commits", "legend-commits", "commits:", (g) => `group ${g}`, "/s");
    drawChart("chart-lag", "legend-lag", "lag:", (g) => `group ${g}`, "", 4);
  },
};

const pksPage = {
  selected: null,
  mount(root) {
    fill(root, el("div", { id: "pks-view" }));
    this.update();
  },
  update() {
    const view = $("pks-view");
    if (!view) return;
    const list = data.pks?.pks ?? [];
    if (this.selected !== null) {
      const entry = list.find((pk) => pk.state.pkId === this.selected);
      fill(
        view,
        el("p", {}, el("a", { href: "#pks", class: "back" }, "← all PKs")),
        entry
          ? [
              el("h2", {}, `PK ${entry.state.pkId} · arena ${entry.arena}`),
              el("div", { class: "card", id: "pk-detail" }, scoreboard(entry.state, nodeNow(), entry.viewers)),
              el(
                "div",
                { class: "row" },
                el(
                  "button",
                  {
                    class: "danger",
                    id: "abort-pk",
                    onclick: () =>
                      act(`End PK ${entry.state.pkId} abnormally (status 3, no winner)`, () =>
                        api.post(`/admin/pks/${entry.state.pkId}/abort`),
                      ),
                  },
                  "End this PK abnormally",
                ),
              ),
            ]
          : el("p", { class: "empty" }, `PK ${this.selected} is not running (any more).`),
      );
      return;
    }
    fill(
      view,
      el("h2", {}, `Live PKs (${list.length})`),
      list.length === 0
        ? el("p", { class: "empty" }, "No PK is running.")
        : el(
            "div",
            { class: "card" },
            el(
              "table",
              { id: "pk-table" },
              el(
                "tr",
                {},
                ["PK", "arena", "phase", "time left", "source", "", "", "target", "viewers", "top gifter"].map((h) =>
                  el("th", {}, h),
                ),
              ),
              list.map((entry) => {
                const s = entry.state;
                const top = [...(s.sourceTopGifts ?? []), ...(s.targetTopGifts ?? [])].sort((a, b) => b.consume - a.consume)[0];
                const running = s.status === 0 || s.status === 1;
                return el(
                  "tr",
                  {
                    class: "clickable",
                    dataset: { pk: s.pkId, sourceGifts: s.sourceGifts, targetGifts: s.targetGifts, status: s.status },
                    onclick: () => {
                      location.hash = `#pk/${s.pkId}`;
                    },
                  },
                  el("td", {}, String(s.pkId)),
                  el("td", {}, String(entry.arena)),
                  el("td", {}, el("span", { class: `phase p${s.status}` }, phase(s.status))),
                  el("td", { class: "num" }, running ? clock(s.endTime - nodeNow()) : result(s) ?? ""),
                  el("td", {}, `${s.sourceUser}`),
                  el("td", { class: "num", dataset: { side: "source" } }, number(s.sourceGifts)),
                  el("td", { class: "num", dataset: { side: "target" } }, number(s.targetGifts)),
                  el("td", {}, `${s.targetUser}`),
                  el("td", { class: "num" }, `${entry.viewers[0]} / ${entry.viewers[1]}`),
                  el("td", {}, top ? `${top.user.nickname || top.user.id}: ${number(top.consume)}` : "-"),
                );
              }),
            ),
          ),
    );
  },
};

const lobbyPage = {
  mount(root) {
    fill(root, el("div", { id: "lobby-view" }));
    this.update();
  },
  update() {
    const view = $("lobby-view");
    const lobby = data.lobby;
    if (!view || !lobby) return;
    const now = nodeNow();
    fill(
      view,
      el("h2", {}, `Lobby · ${number(lobby.live)} anchors live · ${lobby.matching.length} matching · ${lobby.held.length} PKs holding rooms`),
      el("h3", {}, "Matching"),
      el(
        "div",
        { class: "card" },
        lobby.matching.length === 0
          ? el("p", { class: "empty" }, "Nobody is matching.")
          : el(
              "table",
              { id: "matching" },
              el("tr", {}, ["anchor", "room", "country", "matching for", "batch", "invitees (refused)"].map((h) => el("th", {}, h))),
              lobby.matching.map((m) =>
                el(
                  "tr",
                  { dataset: { anchor: m.anchor } },
                  el("td", {}, String(m.anchor)),
                  el("td", {}, String(m.room)),
                  el("td", {}, m.country || "-"),
                  el("td", { class: "num" }, ago(now - m.since_ms)),
                  el("td", { class: "num" }, String(m.batch)),
                  el("td", {}, m.invitees.map((i) => (m.refused.includes(i) ? `${i} (refused)` : String(i))).join(", ") || "-"),
                ),
              ),
            ),
      ),
      el("h3", {}, "Open invitations"),
      el(
        "div",
        { class: "card" },
        lobby.invitations.length === 0
          ? el("p", { class: "empty" }, "No open invitation.")
          : el(
              "table",
              {},
              el("tr", {}, ["inviter", "invitee", "batch"].map((h) => el("th", {}, h))),
              lobby.invitations.map((i) =>
                el("tr", {}, el("td", {}, String(i.inviter)), el("td", {}, String(i.invitee)), el("td", {}, String(i.batch))),
              ),
            ),
      ),
      el("h3", {}, "Invitation cool-downs"),
      el(
        "div",
        { class: "card" },
        lobby.cooldowns.length === 0
          ? el("p", { class: "empty" }, "No anchor is cooling down.")
          : el(
              "table",
              {},
              el("tr", {}, ["anchor", "invited at", "can be invited again in"].map((h) => el("th", {}, h))),
              lobby.cooldowns.map((c) =>
                el("tr", {}, el("td", {}, String(c.anchor)), el("td", {}, time(c.invited_ms)), el("td", { class: "num" }, clock(c.until_ms - now))),
              ),
            ),
      ),
    );
  },
};

const gatewayPage = {
  mount(root) {
    fill(
      root,
      el("h2", {}, "Gateway"),
      el("div", { class: "card" }, el("table", { id: "gateway" })),
      el(
        "div",
        { class: "grid2" },
        chartCard("Pushes per second, by node", "chart-pushes", "legend-pushes"),
        chartCard("Gifts counted per second, by node", "chart-gifts", "legend-gifts"),
      ),
      el("h2", {}, "Sinks"),
      el("div", { class: "card" }, el("table", { id: "sinks" })),
    );
  },
  update() {
    const cluster = data.cluster;
    if (!cluster) return;
    const last = (name) => {
      const points = history.get(name);
      return points.length ? points[points.length - 1][1] : null;
    };
    fill(
      $("gateway"),
      el(
        "tr",
        {},
        ["node", "connections", "pushes/s", "pushes", "slow-client drops", "gifts/s", "gifts", "commands", "refused"].map((h, i) =>
          el("th", { class: i ? "num" : "" }, h),
        ),
      ),
      cluster.nodes.map((node) => {
        const g = node.report?.gateway;
        if (!g) return el("tr", { class: "bad" }, el("td", {}, `node ${node.node}`), el("td", { colspan: 8 }, `unreachable: ${node.error ?? ""}`));
        const rate = (name) => {
          const value = last(`${name}:${node.node}`);
          return value === null ? "-" : value.toFixed(1);
        };
        return el(
          "tr",
          { dataset: { node: node.node } },
          el("td", {}, `node ${node.node}`),
          el("td", { class: "num" }, number(g.connections)),
          el("td", { class: "num" }, rate("pushes")),
          el("td", { class: "num" }, number(g.pushes)),
          el("td", { class: `num${g.slow_drops ? " bad" : ""}` }, number(g.slow_drops)),
          el("td", { class: "num" }, rate("gifts")),
          el("td", { class: "num" }, number(g.gifts)),
          el("td", { class: "num" }, number(g.commands)),
          el("td", { class: "num" }, number(g.refused)),
        );
      }),
    );
    fill(
      $("sinks"),
      el(
        "tr",
        {},
        ["node", "results written", "repaired", "errors", "lag (last)", "lag (worst)", "cache changes", "cache rebuilds", "cache errors"].map((h, i) =>
          el("th", { class: i ? "num" : "" }, h),
        ),
      ),
      cluster.nodes
        .filter((node) => node.report)
        .map((node) => {
          const s = node.report.sinks;
          return el(
            "tr",
            {},
            el("td", {}, `node ${node.node}`),
            el("td", { class: "num" }, number(s.results_written)),
            el("td", { class: `num${s.results_repaired ? " bad" : ""}` }, number(s.results_repaired)),
            el("td", { class: `num${s.results_errors ? " bad" : ""}` }, number(s.results_errors)),
            el("td", { class: "num" }, `${number(s.results_lag_ms)} ms`),
            el("td", { class: "num" }, `${number(s.results_lag_max_ms)} ms`),
            el("td", { class: "num" }, number(s.cache_changes)),
            el("td", { class: "num" }, number(s.cache_rebuilds)),
            el("td", { class: `num${s.cache_errors ? " bad" : ""}` }, number(s.cache_errors)),
          );
        }),
    );
    drawChart("chart-pushes", "legend-pushes", "pushes:", (n) => `node ${n}`, "/s");
    drawChart("chart-gifts", "legend-gifts", "gifts:", (n) => `node ${n}`, "/s");
  },
};

const configPage = {
  async mount(root) {
    fill(root, el("h2", {}, "Config (t_config rows)"), el("div", { id: "config-rows" }, el("p", { class: "muted" }, "Loading…")));
    let rows;
    try {
      rows = (await api.get("/admin/config")).rows;
    } catch (error) {
      fill($("config-rows"), el("div", { class: "error" }, `Could not read the rows: ${error.message}`));
      return;
    }
    fill(
      $("config-rows"),
      rows.map((row) => {
        const message = el("div", { class: "muted", dataset: { message: row.key } });
        const value = el("textarea", { rows: row.value.length > 60 ? 3 : 1, dataset: { key: row.key }, spellcheck: "false" });
        value.value = row.value;
        const check = async () => {
          const answer = await api.post("/admin/config/check", { key: row.key, value: value.value });
          message.textContent = answer.message;
          message.className = answer.valid ? "ok" : "bad";
          return answer.valid;
        };
        return el(
          "div",
          { class: "card", dataset: { row: row.key } },
          el("h3", { class: "key" }, row.key),
          value,
          el(
            "div",
            { class: "row" },
            el("button", { class: "secondary", type: "button", dataset: { check: row.key }, onclick: check }, "Check"),
            el(
              "button",
              {
                type: "button",
                dataset: { apply: row.key },
                onclick: async () => {
                  if (!(await check())) return;
                  if (await act(`Set ${row.key} to ${value.value} in every group`, () => api.post("/admin/config", { key: row.key, value: value.value }))) {
                    this.mount(current.root);
                  }
                },
              },
              "Apply",
            ),
          ),
          message,
        );
      }),
    );
  },
};

function options(values, labelOf, selected) {
  return values.map((v) => el("option", { value: v, selected: String(v) === String(selected) }, labelOf(v)));
}

function refill(select, values, labelOf) {
  const selected = select.value;
  const wanted = values.map((v) => `${v}=${labelOf(v)}`).join("|");
  if (select.dataset.values === wanted) return;
  select.dataset.values = wanted;
  fill(select, options(values, labelOf, selected));
}

const actionsPage = {
  mount(root) {
    const field = (label, input) => el("label", {}, label, input);
    const form = (id, title, fields, button, run, danger = false) =>
      el(
        "form",
        {
          class: "card",
          id,
          onsubmit: async (event) => {
            event.preventDefault();
            await run(new FormData(event.target));
          },
        },
        el("h3", {}, title),
        el("div", { class: "row" }, fields, el("button", { class: danger ? "danger" : "", type: "submit" }, button)),
      );
    fill(
      root,
      el("h2", {}, "Actions"),
      el(
        "div",
        { class: "grid2" },
        form(
          "act-transfer",
          "Place a group's leadership",
          [field("group", el("select", { name: "group", id: "transfer-group" })), field("on node", el("select", { name: "to", id: "transfer-to" }))],
          "Transfer",
          (f) =>
            act(`Place the leadership of group ${f.get("group")} on node ${f.get("to")}`, () =>
              api.post(`/admin/groups/${f.get("group")}/transfer-leader`, { to: Number(f.get("to")) }),
            ),
        ),
        form(
          "act-enable",
          "Switch PKs on or off (pk_enable)",
          [field("pk_enable", el("select", { name: "value", id: "enable-value" }, options(["true", "false"], (v) => (v === "true" ? "on (true)" : "off (false)"), "true")))],
          "Switch",
          (f) => act(`Set pk_enable to ${f.get("value")} in every group`, () => api.post("/admin/config", { key: "pk_enable", value: f.get("value") })),
        ),
        form(
          "act-abort",
          "End a PK abnormally",
          [field("PK id", el("input", { name: "pk", inputmode: "numeric", required: true, pattern: "[1-9][0-9]*" }))],
          "End PK",
          (f) => act(`End PK ${f.get("pk")} abnormally (status 3, no winner)`, () => api.post(`/admin/pks/${f.get("pk")}/abort`)),
          true,
        ),
        form(
          "act-drain",
          "Drain a node and stop it",
          [field("node", el("select", { name: "node", id: "drain-node" }))],
          "Drain",
          (f) => act(`Drain node ${f.get("node")} and stop it`, () => api.post("/admin/drain", { node: Number(f.get("node")) })),
          true,
        ),
        form(
          "act-learner",
          "Add a node (as a learner)",
          [
            field("node id", el("input", { name: "node", inputmode: "numeric", required: true, pattern: "[1-9][0-9]*" })),
            field("cluster address", el("input", { name: "addr", required: true, placeholder: "127.0.0.4:7700" })),
          ],
          "Add",
          (f) => act(`Add node ${f.get("node")} at ${f.get("addr")} as a learner`, () => api.post("/admin/learners", { node: Number(f.get("node")), addr: f.get("addr") })),
        ),
        form(
          "act-promote",
          "Promote a learner to voter",
          [field("node id", el("input", { name: "node", inputmode: "numeric", required: true, pattern: "[1-9][0-9]*" }))],
          "Promote",
          (f) => act(`Promote node ${f.get("node")} to voter`, () => api.post("/admin/promote", { node: Number(f.get("node")) })),
        ),
        form(
          "act-remove",
          "Remove a node from every group",
          [field("node", el("select", { name: "node", id: "remove-node" }))],
          "Remove",
          (f) => act(`Remove node ${f.get("node")} from every group`, () => api.post("/admin/remove", { node: Number(f.get("node")) })),
          true,
        ),
        form("act-balance", "Spread leaders again (clear placements)", [], "Balance", () =>
          act("Clear every leader placement", () => api.post("/admin/balance")),
        ),
      ),
      el("h2", {}, "Audit log"),
      el("div", { class: "card" }, el("table", { id: "audit" })),
    );
    this.update();
  },
  update() {
    if (!$("audit")) return;
    const groups = groupIds();
    const nodes = members();
    refill($("transfer-group"), groups, (g) => `group ${g} (${groupView(g)?.kind ?? ""}, led by ${leaderOf(g) ?? "none"})`);
    refill($("transfer-to"), nodes, (n) => `node ${n}`);
    refill($("drain-node"), nodes, (n) => `node ${n}`);
    refill($("remove-node"), nodes, (n) => `node ${n}`);
    fill(
      $("audit"),
      el("tr", {}, ["#", "when", "who", "what", "outcome"].map((h) => el("th", {}, h))),
      data.audit.length === 0
        ? el("tr", {}, el("td", { colspan: 5, class: "empty" }, "Nothing recorded yet."))
        : [...data.audit].reverse().map((entry) =>
            el(
              "tr",
              { dataset: { seq: entry.seq } },
              el("td", { class: "num" }, String(entry.seq)),
              el("td", {}, new Date(entry.at_ms).toLocaleString("en-GB", { hour12: false })),
              el("td", {}, entry.who),
              el("td", { class: "what" }, entry.what),
              el("td", { class: entry.outcome === "done" ? "ok" : "bad" }, entry.outcome),
            ),
          ),
    );
  },
};

const pages = {
  cluster: clusterPage,
  pks: pksPage,
  lobby: lobbyPage,
  gateway: gatewayPage,
  config: configPage,
  actions: actionsPage,
};

function route() {
  if (!api) return;
  const hash = location.hash.replace(/^#/, "");
  let name = hash.split("/")[0] || "cluster";
  if (name === "pk") {
    pksPage.selected = Number(hash.split("/")[1]);
    name = "pks";
  } else if (name === "pks") {
    pksPage.selected = null;
  }
  if (!pages[name]) name = "cluster";
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === name);
  current.name = name;
  current.root = $("page");
  document.body.dataset.page = name;
  pages[name].mount(current.root);
  pages[name].update?.();
}

// ---- session -------------------------------------------------------------------------------

function logout(message) {
  feed?.abort?.abort();
  feed = null;
  api = null;
  sessionStorage.removeItem(TOKEN_KEY);
  fill($("page"));
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("feed").hidden = true;
  $("who").textContent = "";
  const form = $("login");
  form.hidden = false;
  const error = $("login-error");
  error.textContent = message ?? "";
  error.hidden = !message;
  document.body.dataset.session = "out";
}

async function login(token, operator) {
  const candidate = new Api(token, operator);
  await candidate.get("/admin/status");
  api = candidate;
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(OPERATOR_KEY, operator);
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = operator;
  document.body.dataset.session = "in";
  feed = {};
  runFeed(feed);
  route();
}

function start() {
  for (const link of document.querySelectorAll("#nav a")) link.href = `#${link.dataset.page}`;
  window.addEventListener("hashchange", route);
  $("logout").addEventListener("click", () => logout());
  const form = $("login");
  form.operator.value = sessionStorage.getItem(OPERATOR_KEY) ?? "";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login(form.token.value.trim(), form.operator.value.trim());
      form.token.value = "";
    } catch (error) {
      const refused = error instanceof ApiError && error.status === 401;
      logout(refused ? "Wrong admin token: the node answered 401." : `Could not reach the node: ${error.message}`);
    }
  });
  // Time left and waiting times move on between events.
  setInterval(() => {
    if (current.name === "pks" || current.name === "lobby") pages[current.name].update();
  }, 500);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    login(token, sessionStorage.getItem(OPERATOR_KEY) ?? "").catch(() => logout("Your session ended: log in again."));
  } else {
    logout();
  }
}

start();
