//! `match`: a storm of anchors starting to match (command 28 type 1), each a fresh anchor
//! that entered its room beforehand, at `--rate` starts per second (or `--clients` in a
//! closed loop over `--anchors` anchors). Measured: the start's reply (`reply`), and for
//! each start that matched at once (902004) the time to its PK's first push (`created`).
//! All the anchors are compatible, so every one of them must end up in a PK but for at
//! most one left waiting when their number is odd.
//!
//! Then, where the bench can set `pk_config` (an admin API), `--rounds` invitation
//! rounds (3 by default): an anchor waits alone, after `interveningTime` (set to 500 ms)
//! live anchors are invited (push 12), half of them accept and half refuse at once.
//! Measured: the answers' replies (`accept`, `refuse`), and that exactly one accept wins
//! each round (902004) while the others get 902003.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pkd_cluster::AppClient;
use pkd_cluster::app::{self, AppError};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::recorder::{Outcome, Recorder, new_histogram, record_latency};
use super::super::schedule::{LoadMode, Ticket};
use super::super::{Bench, ScenarioOutput};
use super::{OPENING_MS, connect_all, grace};

/// `interveningTime` for the invitation rounds.
const INTERVENING_MS: u64 = 500;
/// `inviteNum` for the invitation rounds.
const INVITE_NUM: usize = 4;

/// The storm's anchors, each taken once.
struct Storm {
    anchors: Vec<Mutex<Option<AppClient>>>,
    /// Anchor user → the PK its first push named.
    matched: Mutex<HashMap<u64, u64>>,
    created: Mutex<hdrhistogram::Histogram<u64>>,
    started: AtomicU64,
    codes: Mutex<BTreeMap<String, u64>>,
}

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let configurable = bench.target.has_admin();
    if configurable {
        // Matched anchors stay in their PKs until the run is over, so that none of them is
        // live and idle (and invitable) during the rounds.
        let battle = (bench.warmup + bench.duration + Duration::from_secs(120)).as_millis();
        bench.target.set_config("pk_duration", &format!("{OPENING_MS},{battle},0,600000")).await?;
        let config = format!(
            "{{'name':'bench','interveningTime':{INTERVENING_MS},'endTime':600000,'inviteNum':{INVITE_NUM},'inviteColdDown':1}}"
        );
        bench.target.set_config("pk_config", &config).await?;
    }
    let count = match bench.mode {
        LoadMode::Open { rate, .. } => (rate * (bench.warmup + bench.duration).as_secs_f64()).ceil() as usize,
        LoadMode::Closed { .. } => bench.args.anchors.unwrap_or(2_000),
    };
    let count = count.max(2).div_ceil(2) * 2;
    eprintln!("connecting {count} anchors, each entering its room...");
    let users: Vec<u64> = (0..count as u64).map(|index| bench.user_base + index).collect();
    let clients = connect_all(bench, users, |mut client| async move {
        let user = client.user();
        let reply = client.enter(user, true).await?;
        anyhow::ensure!(app::reply_code(&reply) == app::SUCCESS, "anchor {user} entering its room: {reply}");
        Ok(client)
    })
    .await?;
    let storm = Arc::new(Storm {
        anchors: clients.into_iter().map(|client| Mutex::new(Some(client))).collect(),
        matched: Mutex::new(HashMap::new()),
        created: Mutex::new(new_histogram()),
        started: AtomicU64::new(0),
        codes: Mutex::new(BTreeMap::new()),
    });
    eprintln!("storm: {count} anchors start matching");
    let mut measurement = bench.begin(false, Duration::from_secs(1));
    let (stop_watching, watching) = watch::channel(false);
    let watchers = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..bench.workers())
        .map(|_| {
            let (storm, tickets, recorder) = (storm.clone(), measurement.tickets.clone(), measurement.recorder.clone());
            let (watching, watchers) = (watching.clone(), watchers.clone());
            tokio::spawn(async move {
                while let Some(ticket) = tickets.next().await {
                    let Some(client) = storm.take(ticket.index as usize) else {
                        // Every anchor has started (closed loop): the storm is over.
                        tickets.stop();
                        break;
                    };
                    recorder.begin();
                    let (outcome, client) = start(&storm, client).await;
                    recorder.finish(ticket.intended, outcome);
                    if let Some(client) = client {
                        let task = tokio::spawn(watch_anchor(
                            storm.clone(),
                            client,
                            ticket,
                            recorder.clone(),
                            watching.clone(),
                        ));
                        watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    measurement.load_ended(&bench.target).await;
    // Let the last PKs' first pushes arrive.
    grace(Duration::from_secs(2)).await;
    let started = storm.started.load(Ordering::Relaxed);
    let (anchors_matched, pks) = {
        let matched = storm.matched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pks: Vec<u64> = matched.values().copied().collect();
        pks.sort_unstable();
        pks.dedup();
        (matched.len() as u64, pks.len() as u64)
    };
    let unmatched = started.saturating_sub(anchors_matched);

    let rounds = if configurable { bench.args.rounds.unwrap_or(3) } else { 0 };
    let mut extra_latency = BTreeMap::new();
    let invitations = if rounds > 0 {
        let invitations = invitation_rounds(bench, rounds, &measurement.recorder).await?;
        extra_latency.insert("accept".to_owned(), invitations.accept);
        extra_latency.insert("refuse".to_owned(), invitations.refuse);
        invitations.details
    } else {
        json!({"rounds": 0, "note": "needs an admin API to shorten interveningTime (--local, or --admin)"})
    };
    let _ = stop_watching.send(true);
    let watchers: Vec<_> = std::mem::take(&mut *watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for task in watchers {
        let _ = task.await;
    }
    let created = storm.created.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let measured_matches = created.len();
    extra_latency.insert("created".to_owned(), created);
    let finished = bench.end(measurement).await;
    for slot in &storm.anchors {
        let client = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(client) = client {
            client.close().await;
        }
    }
    let seconds = finished.duration.as_secs_f64().max(f64::MIN_POSITIVE);
    let details = json!({
        "anchors": count,
        "started": started,
        "start_codes": *storm.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        "anchors_matched": anchors_matched,
        "pks_created": pks,
        "matches_per_second": measured_matches as f64 / seconds,
        "unmatched": unmatched,
        "all_pairs_matched": unmatched <= started % 2,
        "invitations": invitations,
    });
    Ok(ScenarioOutput { finished, primary: "reply", items: None, details, extra_latency })
}

impl Storm {
    fn take(&self, index: usize) -> Option<AppClient> {
        self.anchors.get(index)?.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn count(&self, code: &str) {
        *self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(code.to_owned()).or_default() += 1;
    }
}

/// One anchor's start; returns the outcome, and the client unless its connection failed.
async fn start(storm: &Storm, mut client: AppClient) -> (Outcome, Option<AppClient>) {
    storm.started.fetch_add(1, Ordering::Relaxed);
    match client.start().await {
        Ok(reply) => {
            let code = app::reply_code(&reply).to_owned();
            storm.count(&code);
            match code.as_str() {
                app::SUCCESS | "902004" => (Outcome::Ok { items: 1 }, Some(client)),
                _ => (Outcome::Failed { code, items: 1, items_ok: 0 }, Some(client)),
            }
        }
        Err(error) => {
            let code = failure_code(&error);
            storm.count(code);
            (Outcome::Failed { code: code.to_owned(), items: 1, items_ok: 0 }, None)
        }
    }
}

fn failure_code(error: &AppError) -> &'static str {
    match error {
        AppError::Timeout { .. } => "timeout",
        _ => "connection",
    }
}

/// Reads an anchor's pushes until the run is over: its PK's first push records the match
/// (and, for the anchor whose start matched, the creation latency).
async fn watch_anchor(
    storm: Arc<Storm>,
    mut client: AppClient,
    ticket: Ticket,
    recorder: Arc<Recorder>,
    mut watching: watch::Receiver<bool>,
) {
    let user = client.user();
    let mut seen = false;
    let mut pending: Vec<app::Received> = client.take_kept();
    loop {
        for received in pending.drain(..) {
            if seen || !app::is_push(&received.message, 10) {
                continue;
            }
            let content = &received.message["content"];
            let Some(pk) = content["pkId"].as_u64() else { continue };
            seen = true;
            storm.matched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user, pk);
            // The anchor matched later is the PK's target: its start created the PK.
            if content["targetUser"] == user && ticket.intended >= recorder.measure_from() {
                let latency = Instant::from_std(received.at).saturating_duration_since(ticket.intended);
                let mut created = storm.created.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                record_latency(&mut created, latency);
            }
        }
        let next = tokio::select! {
            next = client.next_message(Duration::from_secs(3600)) => next,
            _ = watching.changed() => break,
        };
        match next {
            Ok(received) => pending.push(received),
            Err(AppError::Timeout { .. } | AppError::Malformed { .. }) => {}
            Err(_) => break,
        }
    }
    client.close().await;
}

/// What the invitation rounds measured.
struct Invitations {
    details: serde_json::Value,
    accept: hdrhistogram::Histogram<u64>,
    refuse: hdrhistogram::Histogram<u64>,
}

/// Connects `user` and enters its room as its anchor: a live anchor, not matching.
async fn live_anchor(bench: &Bench, index: usize, user: u64) -> anyhow::Result<AppClient> {
    let mut client = bench.target.connect(index, user).await?;
    let reply = client.enter(user, true).await?;
    anyhow::ensure!(app::reply_code(&reply) == app::SUCCESS, "anchor {user} entering its room: {reply}");
    Ok(client)
}

/// Invitation rounds: an inviter waits alone; after `interveningTime` the lobby invites
/// the live anchors (exactly `inviteNum` of them are live and idle), which answer at
/// once, half accepting and half refusing. The winner leaves for its PK and a fresh
/// anchor takes its place.
async fn invitation_rounds(bench: &Bench, rounds: usize, recorder: &Recorder) -> anyhow::Result<Invitations> {
    let mut next_user = bench.user_base + 500_000;
    let mut fresh = || {
        next_user += 1;
        next_user
    };
    let mut invitees = Vec::new();
    for index in 0..INVITE_NUM {
        invitees.push(live_anchor(bench, index, fresh()).await?);
    }
    let mut accept = new_histogram();
    let mut refuse = new_histogram();
    let (mut winners_total, mut violations, mut lost, mut answered) = (0u64, 0u64, 0u64, 0u64);
    let mut codes = BTreeMap::<String, u64>::new();
    let (mut done, mut attempts) = (0, 0);
    while done < rounds && attempts < 2 * rounds {
        attempts += 1;
        let mut inviter = live_anchor(bench, attempts, fresh()).await?;
        let reply = inviter.start().await?;
        if app::reply_code(&reply) != app::SUCCESS {
            // It met an anchor left waiting (an odd one out of the storm): try another.
            inviter.close().await;
            continue;
        }
        done += 1;
        let inviter_id = inviter.user();
        let limit = Duration::from_millis(INTERVENING_MS) + Duration::from_secs(5);
        let answers: Vec<_> = invitees
            .drain(..)
            .enumerate()
            .map(|(index, mut invitee)| {
                tokio::spawn(async move {
                    let invited = |message: &serde_json::Value| {
                        app::is_push(message, 12) && message["content"]["source"] == inviter_id
                    };
                    if invitee.wait_for(limit, invited).await.is_err() {
                        return (invitee, None);
                    }
                    let accepts = index % 2 == 0;
                    let sent = Instant::now();
                    let reply =
                        if accepts { invitee.accept(inviter_id).await } else { invitee.refuse(inviter_id).await };
                    let answer = reply.ok().map(|reply| (accepts, app::reply_code(&reply).to_owned(), sent.elapsed()));
                    (invitee, answer)
                })
            })
            .collect();
        let mut winners = 0;
        for answer in answers {
            let (invitee, answer) = answer.await?;
            let Some((accepts, code, latency)) = answer else {
                recorder.count_error("not invited");
                invitees.push(invitee);
                continue;
            };
            answered += 1;
            *codes.entry(code.clone()).or_default() += 1;
            record_latency(if accepts { &mut accept } else { &mut refuse }, latency);
            match code.as_str() {
                "902004" => {
                    winners += 1;
                    // In a PK now: it leaves the pool.
                    invitee.close().await;
                    continue;
                }
                "902003" if accepts => lost += 1,
                // Protocol refusals (9000xx) are the bench's or the node's failure; the
                // engine's answers (a refusal after the race was decided) are data.
                other if other.starts_with("9000") => recorder.count_error(&format!("answer {other}")),
                _ => {}
            }
            invitees.push(invitee);
        }
        winners_total += winners;
        if winners != 1 {
            violations += 1;
        }
        while invitees.len() < INVITE_NUM {
            invitees.push(live_anchor(bench, invitees.len(), fresh()).await?);
        }
        for invitee in &mut invitees {
            let _ = invitee.take_kept();
        }
        inviter.close().await;
    }
    for invitee in invitees {
        invitee.close().await;
    }
    let details = json!({
        "rounds": done,
        "answers": answered,
        "answer_codes": codes,
        "winners": winners_total,
        "accepts_lost_race": lost,
        "race_violations": violations,
    });
    Ok(Invitations { details, accept, refuse })
}
