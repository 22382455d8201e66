//! The push fan-out benchmark: many viewers on one node, many PKs, a steady gift flow.
//!
//! Starts a real `pkd serve` process (release build), connects anchors and viewers
//! over WebSocket, makes the PKs, then sends gifts through the gift API at a fixed rate
//! and measures, for one tracked viewer per PK, the delivery latency of every gift:
//! from just before its batch's POST is sent to the first push 10 received by the
//! viewer whose `sourceGifts` includes it. No assertion: these are figures to read.
//!
//! The latency is split with the push's `version` (the server's clock when it rendered
//! the push; client and server share the machine's clock):
//! - server: gift sent → push rendered (the cool-down wait, the gift's commit, the
//!   pusher's own delay);
//! - transit: push rendered → received by the tracked viewer (the hub's queues, the
//!   sessions' writes, loopback, and the load generator's own scheduling);
//! - age: rendered → received for every push 10 the tracked viewers get.
//!
//! Also reported: the server's and the load generator's CPU (from /proc), and the
//! push 10 rate per PK seen by the tracked viewers.
//!
//! `cargo bench --bench fanout` runs the target load (10,000 viewers over 500 PKs at
//! 2,000 gifts/s for 30 s). Smaller runs: FANOUT_PKS, FANOUT_VIEWERS_PER_PK,
//! FANOUT_GIFTS_PER_SEC, FANOUT_SECONDS. Pinning (taskset CPU lists), so that the
//! 11,000 client connections do not compete with the server for the same cores:
//! FANOUT_SERVER_CPUS (e.g. `0`) and FANOUT_CLIENT_CPUS (e.g. `1`). FANOUT_PKD runs
//! another `pkd` binary than this build's (to compare two builds under one harness).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const GIFT_TOKEN: &str = "fanout-bench-gift-token";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(cpus: Option<&str>) -> Server {
    let dir = tempfile::TempDir::new().unwrap();
    let binary = std::env::var("FANOUT_PKD")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pkd").to_owned());
    let mut command = match cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpus, &binary]);
            taskset
        }
        None => Command::new(&binary),
    };
    let mut child = command
        .args(["serve", "--dev-auth", "--listen", "127.0.0.1:0", "--log", "warn", "--gift-token", GIFT_TOKEN])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pkd");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("pkd exited").unwrap();
        if let Some(addr) = line.strip_prefix("pkd listening on ") {
            break addr.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr, _dir: dir }
}

/// User and system CPU seconds the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Pins every thread of this process (the load generator) to `cpus`.
fn pin_self(cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset -c {cpus} failed");
}

/// Milliseconds since the Unix epoch (the clock pushes' `version` uses).
fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Latency samples in milliseconds.
#[derive(Default)]
struct Samples {
    /// Gift sent → push with it received.
    delivery: Vec<f64>,
    /// Gift sent → push with it rendered (the push's `version`).
    server: Vec<f64>,
    /// That push rendered → received.
    transit: Vec<f64>,
    /// Rendered → received, for every push 10 to a tracked viewer.
    age: Vec<f64>,
}

fn percentiles(samples: &mut [f64]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    format!("p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms", p(0.5), p(0.99), p(1.0))
}

/// Resident memory of a process, in MiB.
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: &str, user: u64) -> Socket {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer dev:{user}").parse().unwrap());
    loop {
        // A small read buffer: the default (128 KiB) is zero-filled on every read, CPU
        // that 11,000 clients would take from the cores the server shares.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024);
        match tokio_tungstenite::connect_async_with_config(request.clone(), Some(config), false).await {
            Ok((socket, _)) => return socket,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn command(socket: &mut Socket, frame: Value) -> Value {
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["msgType"] == "command" {
                    return value;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("connection lost: {other:?}"),
        }
    }
}

async fn enter(socket: &mut Socket, room: u64, kind: u8) {
    let reply =
        command(socket, json!({"commandId": 40, "msgType": "command", "roomId": room, "sequence": 1, "type": kind}))
            .await;
    assert_eq!(reply["code"], "000000", "{reply}");
}

/// Gifts sent to one PK's source anchor and not yet seen by its tracked viewer.
#[derive(Default)]
struct Pending {
    /// (when sent, when sent by the wall clock in ms, the source side's total once it counts)
    gifts: VecDeque<(Instant, i64, i64)>,
    total: i64,
}

async fn post_gifts(addr: &str, body: &str) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /internal/gifts HTTP/1.1\r\nHost: pkd\r\nAuthorization: Bearer {GIFT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Every gift of the batch must count, or the latency model is wrong.
    let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap();
    for entry in body["result"].as_array().unwrap() {
        assert_eq!(entry["code"], "000000", "{entry}");
    }
    elapsed
}

fn main() {
    let pks = env("FANOUT_PKS", 500);
    let viewers_per_pk = env("FANOUT_VIEWERS_PER_PK", 20);
    let gifts_per_sec = env("FANOUT_GIFTS_PER_SEC", 2000);
    let seconds = env("FANOUT_SECONDS", 30);
    let server_cpus = std::env::var("FANOUT_SERVER_CPUS").ok();
    let client_cpus = std::env::var("FANOUT_CLIENT_CPUS").ok();
    if let Some(cpus) = &client_cpus {
        pin_self(cpus);
    }
    let server = start_server(server_cpus.as_deref());
    let pid = server.child.id();
    let addr = server.addr.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        // Anchors 1..=2*pks: anchor 2k-1 waits, 2k matches it: PK k has source 2k-1.
        let mut anchors = Vec::new();
        for pk in 1..=pks {
            let (source, target) = (2 * pk - 1, 2 * pk);
            let mut a = connect(&addr, source).await;
            let mut b = connect(&addr, target).await;
            enter(&mut a, source, 2).await;
            enter(&mut b, target, 2).await;
            let start = |anchor: u64| json!({"commandId": 28, "msgType": "command", "roomId": anchor, "sequence": 2, "type": 1, "source": anchor});
            assert_eq!(command(&mut a, start(source)).await["code"], "000000");
            assert_eq!(command(&mut b, start(target)).await["code"], "902004");
            anchors.push(a);
            anchors.push(b);
        }
        // Anchors' pushes must be read too, or their queues fill and they are dropped.
        for mut socket in anchors {
            tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} });
        }
        let pending: Arc<Vec<Mutex<Pending>>> = Arc::new((0..pks).map(|_| Mutex::new(Pending::default())).collect());
        let samples = Arc::new(Mutex::new(Samples::default()));
        let tracked_pushes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut viewer = 1_000_000u64;
        for pk in 1..=pks {
            let room = 2 * pk - 1;
            for v in 0..viewers_per_pk {
                viewer += 1;
                let mut socket = connect(&addr, viewer).await;
                enter(&mut socket, room, 1).await;
                let tracked = v == 0;
                let pending = pending.clone();
                let samples = samples.clone();
                let tracked_pushes = tracked_pushes.clone();
                tokio::spawn(async move {
                    while let Some(Ok(message)) = socket.next().await {
                        if !tracked {
                            continue;
                        }
                        let Message::Text(text) = message else { continue };
                        let (now, now_ms) = (Instant::now(), wall_ms());
                        let value: Value = serde_json::from_str(&text).unwrap();
                        let Some(seen) = value["content"]["sourceGifts"].as_i64() else { continue };
                        let rendered = value["version"].as_i64().unwrap_or(now_ms);
                        if std::env::var_os("FANOUT_TRACE").is_some() && pk == 1 {
                            eprintln!("{now:?} push sourceGifts={seen} version={rendered}");
                        }
                        tracked_pushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut slot = pending[(pk - 1) as usize].lock().unwrap();
                        let mut samples = samples.lock().unwrap();
                        samples.age.push((now_ms - rendered) as f64);
                        while slot.gifts.front().is_some_and(|(_, _, total)| *total <= seen) {
                            let (sent, sent_ms, _) = slot.gifts.pop_front().unwrap();
                            samples.delivery.push((now - sent).as_secs_f64() * 1000.0);
                            samples.server.push((rendered - sent_ms) as f64);
                            samples.transit.push((now_ms - rendered) as f64);
                        }
                    }
                });
            }
        }
        // Gifts count only after the opening phase (1.5 s by default).
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("{} PKs, {} viewers connected; sending {gifts_per_sec} gifts/s for {seconds} s", pks, pks * viewers_per_pk);
        // Gifts in batches every 50 ms.
        let batches_per_sec = 20;
        let per_batch = (gifts_per_sec / batches_per_sec).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / batches_per_sec));
        let cpu_before = cpu_seconds(pid);
        let client_cpu_before = cpu_seconds(std::process::id());
        let pushes_before = tracked_pushes.load(std::sync::atomic::Ordering::Relaxed);
        samples.lock().unwrap().age.clear();
        let started = Instant::now();
        let mut gift_id = 0u64;
        let mut in_flight = Vec::new();
        while started.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            let mut gifts = Vec::new();
            let (sent, sent_ms) = (Instant::now(), wall_ms());
            for _ in 0..per_batch {
                gift_id += 1;
                let pk = gift_id % pks + 1;
                let beans = 1 + (gift_id % 9) as i64;
                let mut slot = pending[(pk - 1) as usize].lock().unwrap();
                slot.total += beans;
                if std::env::var_os("FANOUT_TRACE").is_some() && pk == 1 {
                    eprintln!("{sent:?} gift total={}", slot.total);
                }
                let total = slot.total;
                slot.gifts.push_back((sent, sent_ms, total));
                gifts.push(json!({"id": gift_id, "receiver": 2 * pk - 1, "sender": 5_000_000 + gift_id % 1000, "beans": beans}));
            }
            let body = json!({"gifts": gifts}).to_string();
            let addr = addr.clone();
            in_flight.push(tokio::spawn(async move { post_gifts(&addr, &body).await }));
        }
        let mut acks = Vec::new();
        for request in in_flight {
            acks.push(request.await.unwrap());
        }
        acks.sort();
        let ack = |q: f64| acks[((acks.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu_before;
        let client_cpu = cpu_seconds(std::process::id()) - client_cpu_before;
        let (server_rss, client_rss) = (resident_mib(pid), resident_mib(std::process::id()));
        let pushes = tracked_pushes.load(std::sync::atomic::Ordering::Relaxed) - pushes_before;
        // Let the last pushes arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut samples = std::mem::take(&mut *samples.lock().unwrap());
        println!(
            "fan-out: {} viewers over {pks} PKs, {gift_id} gifts in {elapsed:.1} s ({:.0}/s), server CPUs {}, client CPUs {}",
            pks * viewers_per_pk,
            gift_id as f64 / elapsed,
            server_cpus.as_deref().unwrap_or("any"),
            client_cpus.as_deref().unwrap_or("any"),
        );
        println!("  delivery (gift sent -> push received): {} ({} samples)", percentiles(&mut samples.delivery), samples.delivery.len());
        println!("  server   (gift sent -> push rendered): {}", percentiles(&mut samples.server));
        println!("  transit  (push rendered -> received):  {}", percentiles(&mut samples.transit));
        println!("  age of every push 10 on receipt:       {}", percentiles(&mut samples.age));
        println!(
            "  push 10 per PK per second (tracked viewers): {:.2}; gift batch ack p50 {:.0} ms, p99 {:.0} ms",
            pushes as f64 / elapsed / pks as f64,
            ack(0.5),
            ack(0.99)
        );
        println!(
            "  server CPU {:.2} cores, resident {server_rss:.0} MiB; load generator CPU {:.2} cores, resident {client_rss:.0} MiB",
            cpu / elapsed,
            client_cpu / elapsed
        );
    });
}
