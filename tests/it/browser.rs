//! The web console and the watch page, in a real headless Chromium driven over the
//! DevTools protocol, against three real `pkd serve` processes; and the admin routes
//! behind them over plain HTTP. Screenshots of every page go to `target/screenshots/`.
//!
//! Needs Chromium: Debian's package `chromium`, or `PKD_CHROMIUM` naming the executable.

#[path = "browser/cdp.rs"]
mod cdp;
#[path = "browser/setup.rs"]
mod setup;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use pkd_cluster::api::ClusterStatus;
use serde_json::{Value, json};
use setup::{WAIT, admin, agreed_leader, anchor, gift, gifts, http, leaders, start_cluster, start_pk};

/// Every route of the admin listener that reads or changes something, with a body that
/// the right token would make it act on.
const DATA_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/admin/status", ""),
    ("GET", "/admin/cluster", ""),
    ("GET", "/admin/pks", ""),
    ("GET", "/admin/pks/1", ""),
    ("POST", "/admin/pks/1/abort", ""),
    ("GET", "/admin/lobby", ""),
    ("GET", "/admin/config", ""),
    ("POST", "/admin/config", r#"{"key":"pk_enable","value":"false"}"#),
    ("POST", "/admin/config/check", r#"{"key":"pk_enable","value":"false"}"#),
    ("GET", "/admin/audit", ""),
    ("GET", "/admin/audit?after=0", ""),
    ("GET", "/admin/events", ""),
    ("GET", "/metrics", ""),
    ("POST", "/admin/groups/1/transfer-leader", r#"{"to":3}"#),
    ("POST", "/admin/balance", ""),
    ("POST", "/admin/drain", r#"{"node":2}"#),
    ("POST", "/admin/learners", r#"{"node":9,"addr":"127.0.0.9:7700"}"#),
    ("POST", "/admin/promote", r#"{"node":3}"#),
    ("POST", "/admin/remove", r#"{"node":3}"#),
    ("POST", "/admin/init", r#"{"members":{"1":"127.0.0.1:7700"}}"#),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_routes_give_nothing_without_the_admin_token_and_refuse_bad_input() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
    let address = cluster.node(1)?.admin_addr.to_string();
    let token = cluster.options().admin_token.clone();
    let before = leaders(&cluster).await?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{token}"));
    let wrong = [
        None,
        Some("Bearer not-the-admin-token-at-all".to_owned()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {basic}")),
        Some(format!("bearer{token}")),
    ];
    for authorization in &wrong {
        for (method, path, body) in DATA_ROUTES {
            let (status, answer) = http(&address, method, path, authorization.as_deref(), body).await?;
            ensure!(status == 401, "{method} {path} with {authorization:?}: {status} {answer}");
            let reply: Value = serde_json::from_str(&answer).with_context(|| format!("{path}: {answer}"))?;
            ensure!(reply == json!({"error": "missing or wrong admin token"}), "{method} {path}: {answer}");
        }
    }
    // Nothing changed: PKs stay on, no node drained or left, no leader moved, nothing
    // recorded.
    let right = admin(&cluster, 1)?;
    let rows = right.config_rows().await?;
    let enable = rows.rows.iter().find(|row| row.key == "pk_enable").context("pk_enable")?;
    ensure!(enable.value == "true", "{rows:?}");
    ensure!(right.audit(0).await?.entries.is_empty(), "nothing recorded");
    let status = right.cluster().await?;
    ensure!(status.nodes.iter().all(|node| node.reachable), "{status:?}");
    ensure!(status.reports().all(|report| !report.draining), "{status:?}");
    ensure!(leaders(&cluster).await? == before, "leaders moved");
    for group in &status.node(1).context("node 1")?.report.as_ref().context("report")?.status.groups {
        ensure!(group.voters == vec![1, 2, 3] && group.learners.is_empty(), "{group:?}");
    }

    // The page and its files are public and hold no data.
    let (status_code, page) = http(&address, "GET", "/console", None, "").await?;
    ensure!(status_code == 200 && page.contains("id=\"login\""), "{status_code} {page}");
    ensure!(!page.contains("voters") && !page.contains(&token), "{page}");
    let (status_code, script) = http(&address, "GET", "/console/console.js", None, "").await?;
    ensure!(status_code == 200 && script.contains("/admin/events"), "{status_code}");
    let (status_code, _) = http(&address, "GET", "/console/secrets.txt", None, "").await?;
    ensure!(status_code == 404);
    let client = cluster.node(2)?.client_addr.to_string();
    let (status_code, page) = http(&client, "GET", "/watch", None, "").await?;
    ensure!(status_code == 200 && page.contains("/watch/watch.js"), "{status_code} {page}");
    let (status_code, _) = http(&client, "GET", "/console", None, "").await?;
    ensure!(status_code == 404, "the console is on the admin listener only");

    // Bad input to the console's routes gets a clear refusal and changes nothing.
    let bearer = format!("Bearer {token}");
    let auth = Some(bearer.as_str());
    let refused: &[(&str, &str, &str, u16, &str)] = &[
        ("GET", "/admin/pks/0", "", 400, "a PK id is 1 to"),
        ("GET", "/admin/pks/abc", "", 400, ""),
        ("GET", "/admin/pks/424242", "", 404, "no running PK 424242"),
        ("POST", "/admin/pks/0/abort", "", 400, "a PK id is 1 to"),
        ("POST", "/admin/pks/424242/abort", "", 404, "no running PK 424242"),
        ("POST", "/admin/pks/18446744073709551615/abort", "", 400, "a PK id is 1 to"),
        ("GET", "/admin/audit?after=minus-one", "", 400, ""),
        ("GET", "/admin/audit?before=3", "", 400, ""),
        ("POST", "/admin/config/check", "not json", 400, ""),
        ("POST", "/admin/config", r#"{"key":"pk_colour","value":"red"}"#, 400, "unknown key pk_colour"),
        ("POST", "/admin/config", r#"{"key":"pk_duration","value":"1500,300000"}"#, 400, "expected 3 or 4"),
        ("POST", "/admin/drain", r#"{"node":99}"#, 400, "node 99 is not a member"),
        ("POST", "/admin/groups/7/transfer-leader", r#"{"to":2}"#, 404, ""),
        ("POST", "/admin/groups/1/transfer-leader", r#"{"to":"two"}"#, 422, ""),
    ];
    for (method, path, body, expected, words) in refused {
        let (status, answer) = http(&address, method, path, auth, body).await?;
        ensure!(status == *expected, "{method} {path} {body}: {status} {answer}");
        ensure!(answer.contains(words), "{method} {path}: {answer}");
    }
    let check = right.check_config("pk_duration", "1,2").await?;
    ensure!(!check.valid && check.message.contains("expected 3 or 4"), "{check:?}");
    let check = right.check_config("pk_duration", "1000,8000,0").await?;
    ensure!(check.valid && check.message.contains("timing=1000,8000,0,600000"), "{check:?}");
    ensure!(right.config_rows().await? == rows, "a check sets nothing");
    let audit = right.audit(0).await?;
    ensure!(audit.entries.is_empty(), "refusals are not actions: {audit:?}");
    ensure!(leaders(&cluster).await? == before, "leaders moved");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_answers_for_every_node_and_marks_a_killed_one() -> anyhow::Result<()> {
    let mut cluster = start_cluster().await?;
    let mut viewer = anchor(&cluster, 2, 77).await?;
    viewer.heartbeat().await?;
    // The balancer may still be placing leaders just after the start: the status and
    // the leaders are compared once they hold still.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = admin(&cluster, 1)?.cluster().await?;
        let led = leaders(&cluster).await?;
        let agree = led.iter().all(|&(group, leader)| status.leader(group) == Some(leader));
        if agree || std::time::Instant::now() >= deadline {
            for (group, leader) in led {
                ensure!(status.leader(group) == Some(leader), "group {group}: {:?} vs {leader}", status.leader(group));
            }
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    ensure!(status.asked == 1 && status.nodes.len() == 3, "{status:#?}");
    ensure!(status.nodes.iter().all(|node| node.reachable && node.error.is_none()), "{status:#?}");
    let node2 = status.node(2).and_then(|node| node.report.as_ref()).context("node 2's report")?;
    ensure!(node2.status.node == 2 && node2.gateway.connections >= 1, "{node2:#?}");
    ensure!(node2.gateway.commands >= 2, "node 2 answered the viewer's commands: {node2:#?}");
    let node3 = status.node(3).and_then(|node| node.report.as_ref()).context("node 3's report")?;
    ensure!(node3.gateway.connections == 0, "{node3:#?}");

    let table = pkd_cluster_status(&cluster, 1, false)?;
    ensure!(table.starts_with("node 1 (connected to: 2,3)"), "{table}");
    for id in ["1", "2", "3"] {
        let line = table.lines().find(|line| line.split_whitespace().next() == Some(id)).context("node line")?;
        ensure!(line.split_whitespace().nth(1) == Some("up"), "{table}");
    }
    ensure!(table.lines().filter(|line| line.contains(" lobby ") || line.contains(" arena ")).count() == 3, "{table}");
    let json: ClusterStatus = serde_json::from_str(&pkd_cluster_status(&cluster, 1, true)?)?;
    ensure!(json.nodes.len() == 3 && json.reports().count() == 3, "{json:?}");

    tokio::task::block_in_place(|| cluster.kill(3))?;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = admin(&cluster, 2)?.cluster().await?;
        let dead = status.node(3).is_some_and(|node| !node.reachable);
        let others = [1, 2].iter().all(|id| status.node(*id).is_some_and(|node| node.reachable));
        // Every group has a leader among the living again.
        let led = (0..=2).all(|group| status.leader(group).is_some_and(|leader| leader != 3));
        if dead && others && led {
            break status;
        }
        ensure!(Instant::now() < deadline, "node 3 not marked unreachable: {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dead = status.node(3).context("node 3")?;
    ensure!(dead.report.is_none() && dead.error.as_deref().is_some_and(|e| !e.is_empty()), "{dead:?}");
    // Any node answers the same way.
    let from_one = admin(&cluster, 1)?.cluster().await?;
    ensure!(from_one.node(3).is_some_and(|node| !node.reachable), "{from_one:#?}");
    let table = pkd_cluster_status(&cluster, 1, false)?;
    let line = table.lines().find(|line| line.starts_with("3 ")).context("node 3's line")?;
    ensure!(line.contains("UNREACHABLE"), "{table}");
    ensure!(table.lines().filter(|line| line.contains(" up ")).count() == 2, "{table}");
    Ok(())
}

/// `pkd cluster status` against node `node`.
fn pkd_cluster_status(cluster: &pkd_cluster::LocalCluster, node: u64, json: bool) -> anyhow::Result<String> {
    let address = cluster.node(node)?.admin_addr.to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pkd"));
    command.args(["cluster", "status", "--admin", &address, "--token", &cluster.options().admin_token]);
    if json {
        command.arg("--json");
    }
    let output = tokio::task::block_in_place(|| command.output())?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    Ok(stdout)
}

/// The admin token of the test cluster.
fn token(cluster: &pkd_cluster::LocalCluster) -> String {
    cluster.options().admin_token.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_and_a_live_pk_and_acts_with_confirmation() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
    let browser = cdp::Browser::launch().await?;
    let page = browser.page(1280, 860).await?;
    let console = format!("http://{}/console", cluster.node(1)?.admin_addr);

    // A wrong token is refused at the login form.
    page.goto(&console).await?;
    page.wait_for("!document.getElementById('login').hidden", WAIT, "the login form").await?;
    page.set_value("#login [name=token]", "not-the-admin-token-at-all").await?;
    page.set_value("#login [name=operator]", "ops-alice").await?;
    page.click("#login button[type=submit]").await?;
    page.wait_for(
        "document.getElementById('login-error').textContent.includes('401')",
        WAIT,
        "the refusal of a wrong token",
    )
    .await?;
    ensure!(page.eval("document.getElementById('page').childElementCount").await? == json!(0), "no data shown");
    page.screenshot("console-login-refused").await?;

    // The right one opens the cluster page: every group with the leader the nodes report.
    page.set_value("#login [name=token]", &token(&cluster)).await?;
    page.click("#login button[type=submit]").await?;
    page.wait_for("document.body.dataset.session === 'in'", WAIT, "the session").await?;
    page.wait_for("document.body.dataset.feed === 'live'", WAIT, "the live feed").await?;
    for (group, leader) in leaders(&cluster).await? {
        page.wait_for(
            &format!("document.querySelector('#groups tr[data-group=\"{group}\"]')?.dataset.leader === '{leader}'"),
            WAIT,
            &format!("group {group} led by node {leader}"),
        )
        .await?;
    }
    let up = page.eval("document.querySelectorAll('#nodes .node.up').length").await?;
    ensure!(up == json!(3), "{up}");

    // A PK started by app clients, its score moving with gifts.
    let pk = start_pk(&cluster, 301).await?;
    let mut gift_api = gifts(&cluster, 1)?;
    let source_total = gift(&mut gift_api, 9_001, pk.source, 5_001, 120).await?;
    gift(&mut gift_api, 9_002, pk.target, 5_002, 80).await?;
    // An anchor waiting, for the lobby page.
    let mut waiting = anchor(&cluster, 1, 401).await?;
    let queued = waiting.start().await?;
    ensure!(queued["code"] == "000000", "{queued}");
    tokio::time::sleep(Duration::from_millis(2_500)).await; // for the charts to have two samples
    page.screenshot("console-cluster").await?;
    page.click("#nav a[data-page=pks]").await?;
    let row = format!("#pk-table tr[data-pk=\"{}\"]", pk.id);
    page.wait_for(
        &format!("document.querySelector('{row}')?.dataset.sourceGifts === '{source_total}'"),
        WAIT,
        "the PK's source score",
    )
    .await?;
    let more = gift(&mut gift_api, 9_003, pk.source, 5_003, 1_000).await?;
    ensure!(more == source_total + 1_000);
    page.wait_for(
        &format!("document.querySelector('{row}')?.dataset.sourceGifts === '{more}'"),
        WAIT,
        "the score after another gift",
    )
    .await?;
    page.screenshot("console-pks").await?;
    page.click(&row).await?;
    page.wait_for(
        &format!("document.querySelector('#pk-detail [data-side=source] .beans')?.dataset.beans === '{more}'"),
        WAIT,
        "the live scoreboard",
    )
    .await?;
    page.screenshot("console-pk").await?;
    page.click("#nav a[data-page=lobby]").await?;
    page.wait_for("document.querySelector('#matching tr[data-anchor=\"401\"]')", WAIT, "the waiting anchor").await?;
    page.screenshot("console-lobby").await?;
    page.click("#nav a[data-page=gateway]").await?;
    page.wait_for("document.querySelectorAll('#gateway tr[data-node]').length === 3", WAIT, "the gateway table")
        .await?;
    page.screenshot("console-gateway").await?;
    page.click("#nav a[data-page=config]").await?;
    page.wait_for("document.querySelector('textarea[data-key=pk_duration]')", WAIT, "the config rows").await?;
    page.set_value("textarea[data-key=pk_duration]", "1500,300000").await?;
    page.click("button[data-check=pk_duration]").await?;
    page.wait_for(
        "document.querySelector('[data-message=pk_duration]').textContent.includes('expected 3 or 4')",
        WAIT,
        "the check's refusal",
    )
    .await?;
    page.screenshot("console-config").await?;

    // A leadership transfer: cancelled first (nothing happens), then confirmed.
    let before = agreed_leader(&cluster, 1).await?;
    let to = if before == 3 { 2 } else { 3 };
    page.click("#nav a[data-page=actions]").await?;
    page.wait_for("document.querySelectorAll('#transfer-to option').length === 3", WAIT, "the node list").await?;
    page.set_value("#transfer-group", "1").await?;
    page.set_value("#transfer-to", &to.to_string()).await?;
    page.click("#act-transfer button[type=submit]").await?;
    page.wait_for("document.getElementById('confirm').open", WAIT, "the confirmation").await?;
    page.click("#confirm-cancel").await?;
    page.wait_for("!document.getElementById('confirm').open", WAIT, "the dialog to close").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(agreed_leader(&cluster, 1).await? == before, "a cancelled transfer moved nothing");
    ensure!(admin(&cluster, 1)?.audit(0).await?.entries.is_empty(), "nothing recorded");
    page.click("#act-transfer button[type=submit]").await?;
    page.wait_for("document.getElementById('confirm').open", WAIT, "the confirmation").await?;
    let asked = page.eval("document.getElementById('confirm-text').textContent").await?;
    ensure!(asked.as_str().is_some_and(|text| text.contains(&format!("group 1 on node {to}"))), "{asked}");
    page.screenshot("console-confirm").await?;
    page.click("#confirm-ok").await?;
    let what = format!("place the leadership of group 1 on node {to}");
    page.wait_for(
        &format!(
            "[...document.querySelectorAll('#audit tr[data-seq]')].some(r => r.textContent.includes('{what}') && \
             r.textContent.includes('ops-alice') && r.textContent.includes('done'))"
        ),
        WAIT,
        "the transfer's audit entry",
    )
    .await?;
    ensure!(agreed_leader(&cluster, 1).await? == to, "group 1 moved to node {to}");
    page.wait_for(
        &format!("document.querySelector('#transfer-group option[value=\"1\"]')?.textContent.includes('led by {to}')"),
        WAIT,
        "the new leader in the console",
    )
    .await?;

    // pk_enable off, with confirmation; an anchor's start is then refused.
    page.set_value("#enable-value", "false").await?;
    page.click("#act-enable button[type=submit]").await?;
    page.wait_for("document.getElementById('confirm').open", WAIT, "the confirmation").await?;
    page.click("#confirm-ok").await?;
    page.wait_for(
        "[...document.querySelectorAll('#audit tr[data-seq]')].some(r => r.textContent.includes('set pk_enable to false') && r.textContent.includes('done'))",
        WAIT,
        "the switch's audit entry",
    )
    .await?;
    let rows = admin(&cluster, 2)?.config_rows().await?;
    ensure!(rows.rows.iter().any(|row| row.key == "pk_enable" && row.value == "false"), "{rows:?}");
    let mut late = anchor(&cluster, 2, 501).await?;
    let refused = late.start().await?;
    ensure!(refused["code"] == "902001", "PK switched off: {refused}");
    page.screenshot("console-actions").await?;

    // The audit log is replicated: every node shows the same entries.
    let audit = admin(&cluster, 3)?.audit(0).await?;
    let whats: Vec<&str> = audit.entries.iter().map(|entry| entry.what.as_str()).collect();
    ensure!(whats == [what.as_str(), "set pk_enable to false"], "{audit:?}");
    ensure!(audit.entries.iter().all(|entry| entry.who == "ops-alice" && entry.outcome == "done"), "{audit:?}");
    page.check_no_errors()?;
    drop(pk);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_page_shows_the_score_and_the_result_and_needs_a_login_token() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
    admin(&cluster, 1)?.set_config("pk_duration", "1000,6000,0,600000").await?;
    let browser = cdp::Browser::launch().await?;
    let client = cluster.node(2)?.client_addr;

    // A token the node refuses: an error, and no PK data.
    let refused = browser.page(900, 700).await?;
    refused.goto(&format!("http://{client}/watch?room=601&token=v1.601.1.IN.android.300.forged")).await?;
    refused.wait_for("document.body.dataset.error === '1'", WAIT, "the refusal").await?;
    let text = refused.eval("document.getElementById('error').textContent").await?;
    ensure!(text.as_str().is_some_and(|text| text.contains("refused the login token")), "{text}");
    ensure!(refused.eval("location.search.includes('token')").await? == json!(false), "token out of the address bar");

    let watcher = browser.page(900, 700).await?;
    let pk = start_pk(&cluster, 601).await?;
    watcher.goto(&format!("http://{client}/watch?room={}&token=dev:9001", pk.source)).await?;
    watcher
        .wait_for(&format!("document.querySelector('.scoreboard')?.dataset.pk === '{}'", pk.id), WAIT, "the PK")
        .await?;
    let mut gift_api = gifts(&cluster, 3)?;
    let source = gift(&mut gift_api, 7_001, pk.source, 8_001, 300).await?;
    let source = source.max(gift(&mut gift_api, 7_002, pk.source, 8_002, 200).await?);
    let target = gift(&mut gift_api, 7_003, pk.target, 8_003, 150).await?;
    watcher
        .wait_for(
            &format!(
                "document.querySelector('[data-side=source] .beans')?.dataset.beans === '{source}' && \
                 document.querySelector('[data-side=target] .beans')?.dataset.beans === '{target}'"
            ),
            WAIT,
            "the scores after the gifts",
        )
        .await?;
    let left = watcher.eval("Number(document.querySelector('.scoreboard .left').dataset.left)").await?;
    ensure!(left.as_i64().is_some_and(|left| left > 0 && left <= 7_000), "time left {left}");
    watcher.screenshot("watch-battle").await?;
    let top = watcher.eval("document.querySelector('[data-side=source] .gifters li span')?.textContent").await?;
    ensure!(top == json!("fan8001 (8001)"), "top gifter {top}");
    // The end: push 10 with the result, then push 15.
    let winner = pk.source;
    watcher
        .wait_for(
            &format!("document.querySelector('.result')?.dataset.winner === '{winner}'"),
            Duration::from_secs(30),
            "the result",
        )
        .await?;
    watcher.wait_for(&format!("document.body.dataset.closed === '{}'", pk.id), WAIT, "push 15").await?;
    let result = watcher.eval("document.querySelector('.result').textContent").await?;
    ensure!(result == json!(format!("anchor {winner} wins (source)")), "{result}");
    watcher.screenshot("watch-result").await?;

    // The refused page never got a frame from the node, nor any PK.
    let frames = refused.eval("document.querySelectorAll('#frame-log li.in').length").await?;
    ensure!(frames == json!(0), "{frames} frames");
    ensure!(refused.eval("document.querySelector('.scoreboard')").await?.is_null(), "no PK shown");
    refused.screenshot("watch-refused").await?;
    watcher.check_no_errors()?;
    if source <= target {
        bail!("the source should lead: {source} vs {target}");
    }
    Ok(())
}
