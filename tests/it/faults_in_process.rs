//! The in-process tier of the fault tests (`pkd::faults::inproc`, with the
//! `fault-injection` feature, as CI builds): many seeds, each a three-node cluster in this
//! process under link faults per pair and per group, restarts and disk faults, each judged
//! by the checkers of `pkd faults`. And the checkers' power, shown on runs whose driver
//! breaks a promise on purpose; and the bug the tier found first, a stop that waited for
//! ever, held to its fix.

use std::time::Instant;

use pkd::faults::inproc::{Break, Options, Outcome, replay_command, run, run_seeds};

/// Seeds run by the default test, and how many at once.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=12;
const AT_ONCE: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_seeds_of_in_process_faults_pass_every_checker() {
    let started = Instant::now();
    let seeds: Vec<u64> = SEEDS.collect();
    let outcomes = run_seeds(&seeds, AT_ONCE, Options::new, |_, outcome| {
        if let Ok(outcome) = outcome {
            eprintln!("{}", outcome.line());
        }
    })
    .await;
    let mut failures = Vec::new();
    for (seed, outcome) in &outcomes {
        match outcome {
            Ok(outcome) if outcome.failures().is_empty() => {}
            Ok(outcome) => failures.push(format!("{}\n{}", outcome.line(), outcome.report())),
            Err(error) => failures.push(format!(
                "seed {seed}: the run failed: {error:#}\n  replay: {}",
                replay_command(&Options::new(*seed))
            )),
        }
    }
    eprintln!("{} seeds in {:.1} s, {AT_ONCE} at once", seeds.len(), started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of {} seeds failed:\n{}", failures.len(), seeds.len(), failures.join("\n"));
}

/// One run without faults whose driver breaks `broken`.
async fn broken_run(seed: u64, broken: Break) -> Outcome {
    let options = Options {
        faults: Vec::new(),
        broken: Some(broken),
        faulty: std::time::Duration::from_millis(1_500),
        ..Options::new(seed)
    };
    run(options).await.expect("the run")
}

/// The evidence `name` gave, one line each.
fn evidence(outcome: &Outcome, name: &str) -> Vec<String> {
    outcome.verdicts.iter().find(|verdict| verdict.name == name).expect("the checker ran").evidence.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gift_acknowledged_without_being_proposed_is_found_lost() {
    let outcome = broken_run(3, Break::AckUnproposed).await;
    let found = evidence(&outcome, "gifts_counted_once");
    assert!(found.iter().any(|line| line.contains("an acknowledged gift lost")), "{}\n{found:#?}", outcome.line());
    assert!(outcome.replay_command().ends_with("--break ack-unproposed"), "{}", outcome.replay_command());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gift_counted_again_under_a_fresh_id_is_found_twice() {
    let outcome = broken_run(4, Break::LoseDedup).await;
    let counted = evidence(&outcome, "gifts_counted_once");
    assert!(counted.iter().any(|line| line.contains("a gift counted twice")), "{}\n{counted:#?}", outcome.line());
    let ledgers = evidence(&outcome, "ledgers_match_senders");
    assert!(ledgers.iter().any(|line| line.contains("was never sent")), "{}\n{ledgers:#?}", outcome.line());
    // The other promises held: the break is all the checkers found.
    for verdict in outcome.failures() {
        assert!(
            ["gifts_counted_once", "ledgers_match_senders"].contains(&verdict.name),
            "{}: {:#?}",
            verdict.name,
            verdict.evidence
        );
    }
}

/// A leader stopping while it answers a proposal forwarded to it, which it cannot commit
/// (its own messages to the others are cut): the stop must not wait for that commit. It
/// once did for ever, as `Network::shutdown` waited for every request under way, and the
/// commit needed the very links it had closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stops_while_a_forwarded_proposal_waits_for_a_commit() {
    use pkd::replication::network::faults::LinkFaults;
    use pkd::replication::node::start_loopback_cluster;
    use pkd::{GroupId, NodeConfig};
    use pkd_raft::Action;
    use std::time::Duration;

    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::TempDir::new().unwrap()).collect();
    let configs = dirs.iter().map(|dir| NodeConfig { arena_count: 1, ..NodeConfig::single(dir.path()) }).collect();
    let links = LinkFaults::new();
    let shared = links.clone();
    let nodes = start_loopback_cluster(configs, "test", b"cluster secret", move |network| {
        network.link_faults = Some(shared.clone());
    })
    .await
    .unwrap();
    let group = GroupId(1);
    let leader = nodes[0].node.leader(group).expect("a leader");
    let leading = &nodes.iter().find(|started| started.node.id() == leader).unwrap().node;
    let asking = nodes.iter().find(|started| started.node.id() != leader).unwrap().node.clone();
    for other in [1, 2, 3].into_iter().filter(|&id| id != leader) {
        links.cut_one_way(leader, other, Some(group));
    }
    let action = Action::SetConfig { key: "pk_duration".into(), value: "300,1000,0,600000".into() };
    let forwarded = tokio::spawn(async move { asking.propose(group, action).await });
    // The proposal reaches the leader well before the others give up on it (150 ms).
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(5), leading.shutdown())
        .await
        .expect("the leader did not stop within 5 s while a proposal it answered could not commit");
    links.heal();
    let _ = forwarded.await;
    for started in &nodes {
        started.node.shutdown().await;
    }
}
