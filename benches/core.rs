//! Benchmarks of the pure core, on one core, with no I/O.
//!
//! `cargo bench --bench core` runs criterion's throughput figures and then prints
//! start-match latency percentiles and the memory a running PK and a waiting anchor
//! take (measured by a counting allocator, not estimated).

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use pkd_raft::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes, so memory figures are measured.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn profile(anchor: u64, country: &str) -> AnchorProfile {
    AnchorProfile {
        room: RoomId(anchor),
        country: country.to_string(),
        platform: "android".to_string(),
        version_code: 300,
    }
}

fn order(pk: u64) -> PkOrder {
    PkOrder {
        pk: PkId(pk),
        source: Seat { anchor: UserId(pk * 2), room: RoomId(pk * 2) },
        target: Seat { anchor: UserId(pk * 2 + 1), room: RoomId(pk * 2 + 1) },
        interfered: false,
        created_at: TimestampMs(0),
        timing: Config::default().timing,
    }
}

/// An arena with `pks` PKs in their battle phase.
fn arena_with(pks: u64) -> Arena {
    let mut arena = Arena::fresh(Config::default());
    let mut effects = Vec::new();
    for pk in 1..=pks {
        arena.apply(&Command::new(0, ArenaAction::CreatePk(order(pk))), &mut effects);
    }
    effects.clear();
    arena
}

fn gifts(c: &mut Criterion) {
    let mut group = c.benchmark_group("gift");
    const BATCH: u64 = 100_000;
    group.throughput(Throughput::Elements(BATCH));
    // 500 PKs, gifts spread over them, 200 senders per side: a busy arena.
    group.bench_function("apply 100k gifts over 500 PKs", |b| {
        b.iter_batched(
            || {
                let arena = arena_with(500);
                let commands: Vec<Command> = (0..BATCH)
                    .map(|i| {
                        let pk = i % 500 + 1;
                        Command::new(
                            2_000,
                            ArenaAction::Gift(Gift {
                                id: GiftId(i),
                                pk: PkId(pk),
                                receiver: UserId(pk * 2 + (i / 500) % 2),
                                sender: UserId(1_000_000 + (i * 7919) % 200),
                                beans: 1 + (i % 50) as i64,
                                profile: None,
                            }),
                        )
                    })
                    .collect();
                (arena, commands, Vec::with_capacity(8))
            },
            |(mut arena, commands, mut effects)| {
                for command in &commands {
                    effects.clear();
                    black_box(arena.apply(command, &mut effects));
                }
                arena
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// p50/p99/max of one start against 100,000 waiting anchors, on both paths: a match
/// (the newcomer takes the longest waiter) and a queueing (nobody compatible).
fn start_match_latency() {
    const WAITING: u64 = 100_000;
    const SAMPLES: usize = 20_000;
    // Country "A" blocks itself: waiting "A" anchors never match each other, so the
    // queue can be filled; a "B" newcomer matches one of them; a second "A" newcomer
    // finds nobody and queues.
    let mut lobby = Lobby::fresh(Config::default());
    let mut effects = Vec::new();
    let mut at = 0i64;
    let apply = |lobby: &mut Lobby, action: Action, at: i64, effects: &mut Vec<Effect>| {
        effects.clear();
        lobby.apply(&Command::new(at, action), effects)
    };
    apply(
        &mut lobby,
        Action::SetConfig { key: "pk_filter_country".into(), value: "{'A':['A']}".into() },
        0,
        &mut effects,
    );
    apply(
        &mut lobby,
        Action::SetConfig {
            key: "pk_config".into(),
            value: "{'interveningTime':86400000,'endTime':86400000,'inviteNum':10,'inviteColdDown':1}".into(),
        },
        0,
        &mut effects,
    );
    let mut next_anchor = 1u64;
    for _ in 0..WAITING {
        at += 1;
        apply(
            &mut lobby,
            LobbyAction::StartMatch { anchor: UserId(next_anchor), profile: profile(next_anchor, "A"), request: 0 }
                .into(),
            at,
            &mut effects,
        );
        next_anchor += 1;
    }
    let mut percentile = |label: &str, country: &str| {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            at += 1;
            let anchor = next_anchor;
            next_anchor += 1;
            let action =
                LobbyAction::StartMatch { anchor: UserId(anchor), profile: profile(anchor, country), request: 0 };
            let command = Command::new(at, action);
            effects.clear();
            let started = Instant::now();
            let response = lobby.apply(&command, &mut effects);
            samples.push(started.elapsed().as_nanos() as u64);
            black_box(response);
            // Keep the queue at 100,000: refill after a match, drain after a queueing.
            at += 1;
            let refill = if country == "B" {
                let anchor = next_anchor;
                next_anchor += 1;
                LobbyAction::StartMatch { anchor: UserId(anchor), profile: profile(anchor, "A"), request: 0 }
            } else {
                LobbyAction::StopMatch { anchor: UserId(anchor) }
            };
            effects.clear();
            lobby.apply(&Command::new(at, refill), &mut effects);
        }
        samples.sort_unstable();
        let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
        let waiting = lobby.summary().waiting.len();
        println!(
            "start-match with {waiting} waiting, {label}: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs ({SAMPLES} samples)",
            p(0.5),
            p(0.99),
            p(1.0)
        );
    };
    percentile("matched at once", "B");
    percentile("queued", "A");
}

fn memory() {
    const PKS: u64 = 10_000;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let arena = arena_with(PKS);
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let snapshot = arena.snapshot().len();
    println!(
        "running PK without gifters: {} heap bytes, {} snapshot bytes (over {PKS} PKs)",
        heap / PKS as isize,
        snapshot / PKS as usize
    );
    drop(arena);

    const WAITERS: u64 = 100_000;
    let mut lobby = Lobby::fresh(Config::default());
    let mut effects = Vec::new();
    lobby.apply(
        &Command::new(0, Action::SetConfig { key: "pk_filter_country".into(), value: "{'A':['A']}".into() }),
        &mut effects,
    );
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for anchor in 1..=WAITERS {
        effects.clear();
        let action = LobbyAction::StartMatch { anchor: UserId(anchor), profile: profile(anchor, "A"), request: 0 };
        lobby.apply(&Command::new(anchor as i64, action), &mut effects);
    }
    effects.clear();
    effects.shrink_to_fit();
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "waiting anchor: {} heap bytes, {} snapshot bytes (over {WAITERS} anchors)",
        heap / WAITERS as isize,
        lobby.snapshot().len() / WAITERS as usize
    );
}

criterion_group!(benches, gifts);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    start_match_latency();
    memory();
}
