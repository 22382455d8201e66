//! What an operator reads: `pkd serve --log-format json` writes one JSON object per line
//! to stderr, each event inside its spans (node › connection › PK), without colour codes;
//! the launcher lines stay alone on stdout; openraft says nothing at the default level.

use std::time::Duration;

use anyhow::{Context, ensure};
use pkd_cluster::app::{AppClient, Auth, is_push};
use pkd_cluster::gifts::{Gift, GiftClient};
use pkd_cluster::{LocalCluster, LocalOptions};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_connection_and_pk_spans() -> anyhow::Result<()> {
    let mut options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    options.nodes = 1;
    options.log = "info,pkd::gateway=debug,pkd::http=debug".to_owned();
    options.extra_args.extend(["--log-format".to_owned(), "json".to_owned()]);
    let cluster = LocalCluster::start(options.clone())?;
    cluster.admin(1)?.set_config("pk_duration", "100,60000,0,600000").await?;
    let address = cluster.node(1)?.client_addr.to_string();
    let mut source = AppClient::connect(&address, 501, Auth::dev(501)).await?;
    let mut target = AppClient::connect(&address, 502, Auth::dev(502)).await?;
    source.enter(501, true).await?;
    target.enter(502, true).await?;
    source.start().await?;
    target.start().await?;
    let state = target.wait_for(Duration::from_secs(10), |push| is_push(push, 10)).await?;
    let pk = state.message["content"]["pkId"].as_u64().context("pkId")?;
    // A command in the PK's room, and a gift to it.
    target.room_state(502).await?;
    let mut gifts = GiftClient::new(address.clone(), options.gift_token.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let gift = Gift { id: 1, pk_id: None, receiver: 501, sender: 9, beans: 5, sender_profile: None };
        let reply = gifts.send(&gift).await?;
        if reply.code == "000000" || std::time::Instant::now() > deadline {
            ensure!(reply.code == "000000", "{reply:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log_path = cluster.node(1)?.log_path.clone();
    let log = std::fs::read_to_string(&log_path)?;
    ensure!(!log.contains('\u{1b}'), "colour codes in a redirected log");
    // The launcher lines are plain text (stdout); everything else is JSON (stderr).
    let mut events = Vec::new();
    for line in log.lines().filter(|line| !line.starts_with("----")) {
        if line.starts_with("pkd ") {
            ensure!(line.contains(" listening on "), "a stray stdout line: {line}");
            continue;
        }
        let event: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(event["timestamp"].is_string() && event["level"].is_string(), "{line}");
        events.push(event);
    }
    ensure!(events.len() > 5, "{log}");
    // openraft stays at warn: its warnings (a slow heartbeat on a loaded machine) may show,
    // its chatter may not.
    let chatter = events.iter().find(|event| {
        event["target"].as_str().unwrap_or_default().starts_with("openraft")
            && !matches!(event["level"].as_str(), Some("WARN" | "ERROR"))
    });
    ensure!(chatter.is_none(), "openraft logs below warn at the default level: {chatter:?}");
    let has_span = |event: &Value, name: &str, check: &dyn Fn(&Value) -> bool| {
        event["spans"].as_array().is_some_and(|spans| spans.iter().any(|span| span["name"] == name && check(span)))
    };
    let connection = events.iter().find(|event| {
        event["fields"]["message"] == "client connected"
            && has_span(event, "conn", &|span| span["user"] == "502" && span["session"].is_u64() && span["node"] == 1)
    });
    ensure!(connection.is_some(), "no connection event with its span: {log}");
    let command = events.iter().find(|event| {
        event["fields"]["message"] == "command answered"
            && has_span(event, "conn", &|span| span["user"] == "502")
            && has_span(event, "pk", &|span| span["pk"] == pk)
    });
    ensure!(command.is_some(), "no command event inside connection › PK spans: {log}");
    let gift = events.iter().find(|event| {
        event["fields"]["message"] == "gift counted"
            && has_span(event, "pk", &|span| span["pk"] == pk && span["gift"] == 1)
    });
    ensure!(gift.is_some(), "no gift event inside its PK's span: {log}");
    Ok(())
}
