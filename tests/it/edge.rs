//! What a client, an operator and an attacker meet at the edge of a node, over real
//! sockets: views rendered at the moment they are read, a PK's end pushed once, frame and
//! body limits, a start that is safe to retry, the version gate, the read API's token,
//! per-user limits, and floods of half-open HTTP connections and unauthenticated cluster
//! connections against a real `pkd serve` process.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pkd::tokens::login;
use pkd_cluster::{AppClient, Auth, LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::gateway::{Client, GIFT_TOKEN, SECRET, Server, WAIT, start, start_with, token};

/// Every push 10 in `pushes` shows the phase its own `version` (render time) falls in:
/// the opening for `opening_ms` from `startTime`, the battle until `endTime`, over after.
fn assert_phases_match_render_times(pushes: &[Value], opening_ms: i64) {
    for push in pushes.iter().filter(|push| push["type"] == 10) {
        let content = &push["content"];
        let (version, start, end) =
            (push["version"].as_i64(), content["startTime"].as_i64(), content["endTime"].as_i64());
        let (Some(version), Some(start), Some(end)) = (version, start, end) else {
            panic!("a push 10 without its times: {push}");
        };
        let expected = if version < start + opening_ms {
            0
        } else if version < end {
            1
        } else {
            2
        };
        assert_eq!(content["status"], expected, "rendered at {version} (start {start}, end {end}): {push}");
    }
}

/// Reads every push until a push of `push_type` arrives (included), within `limit`.
async fn pushes_until(client: &mut Client, push_type: i64, limit: Duration) -> Vec<Value> {
    let mut seen: Vec<Value> = client.pushes.drain(..).collect();
    if seen.iter().any(|push| push["type"] == push_type) {
        return seen;
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, client.next_json())
            .await
            .unwrap_or_else(|_| panic!("no push {push_type} within {limit:?}; saw {seen:?}"));
        let done = message["msgType"] == "pub" && message["type"] == push_type;
        seen.push(message);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_and_reply_shows_the_phase_at_the_moment_it_is_rendered() {
    let server = start().await;
    // A 2.5 s battle, then a 1.5 s after-battle stage (the source's t_pk.status 4).
    server.config("pk_duration", "300,2500,1500,600000").await;
    let (mut source, mut target, mut viewer) = server.battle(701, 702, 7001).await;

    // The opening is over and nothing has changed the PK since it was made: no gift, no
    // presence change. Every read says "battle" all the same.
    let state = viewer.command(42, 701, json!({})).await;
    assert_eq!(state["result"]["status"], 1, "command 42 after the opening: {state}");
    let entered = viewer.enter(701, false).await;
    assert_eq!(entered["result"]["status"], 1, "command 40 after the opening: {entered}");

    // Until the PK closes (push 15), every push 10 shows the phase of its own render time,
    // the battle's end (status 2, with the winner) is pushed exactly once, and so is the
    // close.
    let seen = pushes_until(&mut viewer, 15, Duration::from_secs(10)).await;
    assert_phases_match_render_times(&seen, 300);
    let over: Vec<&Value> = seen.iter().filter(|push| push["type"] == 10 && push["content"]["status"] == 2).collect();
    assert_eq!(over.len(), 1, "status 2 is pushed once: {seen:?}");
    assert_eq!(over[0]["content"]["winner"], 0, "a draw without gifts: {}", over[0]);
    let closed: Vec<&Value> = seen.iter().filter(|push| push["type"] == 15).collect();
    assert_eq!(closed.len(), 1, "{seen:?}");
    assert_eq!(closed[0]["content"]["status"], 2);
    for anchor in [&mut source, &mut target] {
        let seen = pushes_until(anchor, 15, Duration::from_secs(5)).await;
        let over = seen.iter().filter(|push| push["type"] == 10 && push["content"]["status"] == 2).count();
        assert_eq!(over, 1, "each anchor sees the result once: {seen:?}");
    }
    // Nothing more comes, and the room is in no PK any more.
    let later = viewer.count_pushes(10, Duration::from_millis(2_500)).await;
    assert!(later.is_empty(), "pushes after the close: {later:?}");
    assert_eq!(viewer.command(42, 701, json!({})).await["result"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_size_get_a_reply_or_a_1009_close() {
    let server = start().await;
    let mut client = server.connect(801).await;
    // Up to 8 KiB a frame is read as a command; past it, up to 64 KiB, one 900004 reply per
    // frame and the connection stays open.
    let padded = |bytes: usize| {
        let frame = json!({"commandId": 44, "msgType": "command", "roomId": 1, "sequence": 1, "pad": ""}).to_string();
        let pad = "x".repeat(bytes.saturating_sub(frame.len()));
        json!({"commandId": 44, "msgType": "command", "roomId": 1, "sequence": 1, "pad": pad}).to_string()
    };
    let at_limit = client.raw(padded(pkd::gateway::protocol::MAX_FRAME_BYTES)).await;
    assert_eq!(at_limit["code"], "000000", "a frame of exactly 8 KiB: {at_limit}");
    for size in [8 * 1024 + 1, 20 * 1024, 63 * 1024] {
        let reply = client.raw(padded(size)).await;
        assert_eq!(reply["code"], "900004", "a frame of {size} bytes: {reply}");
    }
    assert_eq!(client.command(44, 1, json!({})).await["code"], "000000", "still usable");

    // A frame past 64 KiB cannot be read: the node closes with 1009 (message too big).
    for size in [100 * 1024, 2 * 1024 * 1024] {
        let mut client = server.connect(802).await;
        let _ = client.socket.send(Message::Text(padded(size).into())).await;
        let close = loop {
            match tokio::time::timeout(WAIT, client.socket.next()).await.expect("no close in time") {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("a {size}-byte frame: no close frame but {other:?}"),
            }
        };
        assert_eq!(close.map(|frame| frame.code), Some(CloseCode::Size), "a {size}-byte frame");
    }

    // The gift API: a body over 1 MiB gets JSON 900004 with HTTP 413, whatever its size.
    for size in [1024 * 1024 + 1, 2 * 1024 * 1024] {
        let (status, body) = post_body(&server, size).await;
        assert_eq!(status, 413, "{size} bytes: {body}");
        assert_eq!(body["code"], "900004", "{size} bytes: {body}");
    }
}

/// Posts a gift API body of `size` bytes (a JSON array padded with spaces) and returns the
/// answer, even if the node answers before it has read the whole body.
async fn post_body(server: &Server, size: usize) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /internal/gifts HTTP/1.1\r\nHost: pkd\r\nAuthorization: Bearer {GIFT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut body = vec![b' '; size];
    body[0] = b'[';
    body[size - 1] = b']';
    // The node may answer and close before taking it all.
    let _ = stream.write_all(&body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let json = response.split_once("\r\n\r\n").and_then(|(_, body)| serde_json::from_str(body).ok());
    (status, json.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_sent_again_with_its_log_id_gets_its_first_answer() {
    let server = start().await;
    let mut anchor = server.connect(901).await;
    anchor.enter(901, true).await;
    let start = |sequence: i64, log_id: &str| {
        json!({"commandId": 28, "msgType": "command", "roomId": 901, "sequence": sequence,
               "initTime": 1626146346120i64, "logId": log_id, "type": 1, "source": 901, "target": 0})
        .to_string()
    };
    assert_eq!(anchor.raw(start(1, "start-a")).await["code"], "000000");
    // The answer was lost, say: the app sends the same start again. It is queued once.
    let again = anchor.raw(start(2, "start-a")).await;
    assert_eq!(again["code"], "000000", "a retried start gets the first answer: {again}");
    let waiting = server.app.node().lobby().read(|lobby| lobby.summary().waiting.len());
    assert_eq!(waiting, 1);
    // A new start (another log id) is a new command: already matching.
    assert_eq!(anchor.raw(start(3, "start-b")).await["code"], "902005");
}

/// A token signed with the tests' secret that says nothing of the client's platform or
/// version.
fn token_without_client(user: u64) -> String {
    let claims = login::Claims {
        user_id: login::UserId::new(user.to_string()).unwrap(),
        expires_at_ms: u64::try_from(pkd::clock::now_ms()).unwrap() + 3_600_000,
        country: Some(login::CountryCode::new("IN").unwrap()),
        platform: None,
        client_version: None,
    };
    login::mint(SECRET, &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_unknown_version_is_refused_while_the_gate_has_rules() {
    let server = start().await;
    // The default gate (the source's row: Android from version 207) has rules: a token
    // that names no platform and no version is refused, as is an old Android client.
    let mut unknown = server.connect_with(&format!("Bearer {}", token_without_client(1001)), "").await.unwrap();
    unknown.enter(1001, true).await;
    let refused = unknown.matching(1, 1001, 1001, 0).await;
    assert_eq!(refused["code"], "902002", "no platform and no version: {refused}");
    let mut old = server.connect_with(&format!("Bearer {}", token(1002, "IN", "android", 206)), "").await.unwrap();
    old.enter(1002, true).await;
    assert_eq!(old.matching(1, 1002, 1002, 0).await["code"], "902002");
    let mut current = server.connect(1003).await;
    current.enter(1003, true).await;
    assert_eq!(current.matching(1, 1003, 1003, 0).await["code"], "000000");
    let waiting = server.app.node().lobby().read(|lobby| lobby.summary().waiting.len());
    assert_eq!(waiting, 1, "only the up-to-date client is queued");

    // A gate without rules lets every client through.
    server.config("version_control", "{pk:[]}").await;
    assert_eq!(unknown.matching(1, 1001, 1001, 0).await["code"], "902004", "matched with the waiting anchor");
}

/// One GET on the node's client listener; returns the status and the JSON body.
async fn get(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Value) {
    crate::common::http_json(server.addr, "GET", path, bearer, "").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_needs_a_login_token_and_metrics_are_not_on_the_public_port() {
    let server = start().await;
    let (_source, _target, _viewer) = server.battle(1101, 1102, 11_001).await;
    for path in ["/api/rooms-in-pk", "/api/anchors/1101/pks"] {
        let (status, body) = get(&server, path, None).await;
        assert_eq!((status, body["code"].clone()), (401, json!("900005")), "{path}: {body}");
        let (status, body) = get(&server, path, Some("not-a-token")).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let user = token(11_002, "IN", "android", 300);
    let (status, body) = get(&server, "/api/rooms-in-pk", Some(&user)).await;
    assert_eq!(status, 200, "{body}");
    let rooms: Vec<u64> = body["rooms"].as_array().unwrap().iter().filter_map(|room| room["roomId"].as_u64()).collect();
    assert!(rooms.contains(&1101) && rooms.contains(&1102), "{body}");
    assert_eq!(get(&server, "/metrics", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_gets_one_budget_and_a_capped_number_of_connections() {
    let server = start_with(|config| {
        config.connections_per_user = 4;
        config.commands_per_second = 10;
        config.command_burst = 20;
    })
    .await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(server.connect(1201).await);
    }
    let refused = server.connect_with(&format!("Bearer {}", token(1201, "IN", "android", 300)), "").await;
    assert!(refused.as_ref().is_err_and(|error| error.contains("429")), "a fifth connection: {:?}", refused.err());
    // Another user is not affected.
    let mut other = server.connect(1202).await;

    // 4 connections × 20 commands at once: one budget of 20 (plus what refills meanwhile)
    // for the user, not 20 per connection.
    let began = Instant::now();
    let mut answered = 0;
    let mut limited = 0;
    for _ in 0..20 {
        for connection in &mut connections {
            match connection.command(44, 1, json!({})).await["code"].as_str() {
                Some("000000") => answered += 1,
                Some("900007") => limited += 1,
                other => panic!("unexpected reply code {other:?}"),
            }
        }
    }
    let refill = (began.elapsed().as_secs_f64() * 10.0).ceil() as i32;
    assert!(answered <= 20 + refill + 1, "{answered} commands answered, {limited} limited in {:?}", began.elapsed());
    assert!(limited >= 80 - 20 - refill - 1, "{limited} limited");
    assert_eq!(other.command(44, 1, json!({})).await["code"], "000000", "the other user keeps its budget");

    // Once a connection closes, the user may open another.
    drop(connections.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        match server.connect_with(&format!("Bearer {}", token(1201, "IN", "android", 300)), "").await {
            Ok(_) => break,
            Err(error) => assert!(Instant::now() < deadline, "no slot freed: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- floods, against a real process -------------------------------------------------------

/// Raises this process's open-file limit to its hard limit (the floods below hold
/// thousands of sockets).
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn one_node() -> LocalCluster {
    let options = LocalOptions { nodes: 1, arenas: 2, ..LocalOptions::new(env!("CARGO_BIN_EXE_pkd")) };
    tokio::task::block_in_place(|| LocalCluster::start(options)).unwrap()
}

/// A command 44 over a new WebSocket connection, as user `user`; returns the reply code
/// and how long the whole took.
async fn fresh_client_answers(address: std::net::SocketAddr, user: u64) -> (String, Duration) {
    let began = Instant::now();
    let mut client = AppClient::connect(&address.to_string(), user, Auth::dev(user)).await.unwrap();
    let reply = client.command(44, Some(1), json!({})).await.unwrap();
    (reply["code"].as_str().unwrap_or_default().to_owned(), began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_requests_leave_the_node_serving() {
    raise_file_limit();
    let cluster = one_node();
    let node = cluster.node(1).unwrap();
    let address = node.client_addr;
    let mut established = AppClient::connect(&address.to_string(), 1301, Auth::dev(1301)).await.unwrap();

    // 2,000 connections, each with half a request head, held open.
    let mut held = Vec::new();
    for _ in 0..2_000 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\nHost: pkd\r\nX-Slow: ").await.unwrap();
        held.push(stream);
    }
    let resident = resident_bytes(node.pid().unwrap());

    // The established client and new ones are served meanwhile.
    let began = Instant::now();
    let reply = established.command(44, Some(1), json!({})).await.unwrap();
    assert_eq!(reply["code"], "000000");
    let established_took = began.elapsed();
    let (code, new_took) = fresh_client_answers(address, 1302).await;
    assert_eq!(code, "000000");
    let mut probe = TcpStream::connect(address).await.unwrap();
    probe.write_all(b"GET /livez HTTP/1.1\r\nHost: pkd\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, probe.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!(
        "with 2,000 half-open requests held: an established client answered in {established_took:?}, \
         a new one connected and answered in {new_took:?}; node resident {} MiB",
        resident / (1024 * 1024)
    );

    // The header timeout (20 s) closes the half-open ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, held.len(), "every half-open connection is closed by the header timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_cluster_connections_cannot_make_a_node_allocate() {
    raise_file_limit();
    let cluster = one_node();
    let node = cluster.node(1).unwrap();
    let pid = node.pid().unwrap();
    let before = resident_bytes(pid);
    // Each connection announces a 64 MiB frame and sends 4 MiB of it: a node that read
    // such frames would hold 256 MiB.
    let mut sending = Vec::new();
    for _ in 0..64 {
        let address = node.cluster_addr;
        sending.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.ok()?;
            let _ = stream.write_all(&(64u32 * 1024 * 1024).to_be_bytes()).await;
            let chunk = vec![7u8; 4 * 1024 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(3), stream.write_all(&chunk)).await;
            Some(stream)
        }));
    }
    let mut held = Vec::new();
    for task in sending {
        held.extend(task.await.ok().flatten());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_bytes(pid);
    println!(
        "64 unauthenticated connections announcing 64 MiB frames and sending 4 MiB each: node resident {} MiB before, {} MiB after ({} connections made)",
        before / (1024 * 1024),
        after / (1024 * 1024),
        held.len()
    );
    assert!(after < before + 64 * 1024 * 1024, "resident grew from {before} to {after} bytes");
    // The node still serves.
    let (code, _) = fresh_client_answers(node.client_addr, 1401).await;
    assert_eq!(code, "000000");
    let status = cluster.admin(1).unwrap().status().await.unwrap();
    assert!(status.groups.iter().all(|group| group.leader == Some(1)), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_that_leaves_its_room_while_matching_is_never_matched() {
    let server = start().await;
    let mut leaving = server.connect(1501).await;
    leaving.enter(1501, true).await;
    assert_eq!(leaving.matching(1, 1501, 1501, 0).await["code"], "000000");
    // Command 41: off air and out of the queue before the reply.
    assert_eq!(leaving.command(41, 1501, json!({})).await["code"], "000000");
    let waiting = server.app.node().lobby().read(|lobby| lobby.summary().waiting.len());
    assert_eq!(waiting, 0, "the anchor left the queue at once");
    // Anchors starting afterwards wait for each other, never for the one that left.
    for anchor in [1502, 1503] {
        let mut other = server.connect(anchor).await;
        other.enter(anchor, true).await;
        let code = other.matching(1, anchor, anchor, 0).await["code"].clone();
        if anchor == 1502 {
            assert_eq!(code, "000000", "nobody to match: it waits");
        } else {
            assert_eq!(code, "902004");
            let state = other.push(10).await;
            assert_eq!(state["content"]["sourceUser"], 1502, "{state}");
        }
    }
    assert!(
        server.app.node().lobby().read(|lobby| lobby.pk_of(pkd_raft::UserId(1501)).is_none()),
        "the anchor that left is in no PK"
    );
}
