//! The WebSocket gateway end to end: a real node (sled in a temporary directory), real
//! sockets on loopback, real WebSocket clients, the gift API over HTTP.

use futures_util::{SinkExt, StreamExt};
use pkd::app::{self, App, AppConfig, Listeners};
use pkd::gateway::{GatewayConfig, RtmCredentials};
use pkd::tokens::login;
use pkd::{NodeConfig, Topology};
use pkd_raft::Action;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_util::sync::CancellationToken;

pub(crate) const SECRET: &[u8] = b"test-login-secret-0123456789";
pub(crate) const GIFT_TOKEN: &str = "gift-token-0123456789abcdef";
pub(crate) const CERTIFICATE: &str = "fedcba9876543210fedcba9876543210";
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) app: App,
    _stop: tokio_util::sync::DropGuard,
    _dir: TempDir,
}

pub(crate) async fn start() -> Server {
    start_with(|_| {}).await
}

/// A server whose gateway settings `tweak` changes from the tests' usual ones.
pub(crate) async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Server {
    start_app(tweak, false).await
}

/// A server that writes its results into an SQLite file of its own, as `pkd serve`
/// does without `--mysql-url`.
pub(crate) async fn start_with_results() -> Server {
    start_app(|_| {}, true).await
}

async fn start_app(tweak: impl FnOnce(&mut GatewayConfig), results: bool) -> Server {
    let dir = TempDir::new().unwrap();
    let config = GatewayConfig {
        login_secret: Some(SECRET.to_vec()),
        gift_token: Some(GIFT_TOKEN.to_owned()),
        rtm: Some(RtmCredentials {
            app_id: "0123456789abcdef0123456789abcdef".into(),
            app_certificate: CERTIFICATE.into(),
        }),
        push_cooldown: Duration::from_millis(500),
        push_period: Duration::from_secs(2),
        presence_interval: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let mut config = config;
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app_config = AppConfig {
        node: NodeConfig { arena_count: 2, ..NodeConfig::single(dir.path()) },
        network: None,
        gateway: config,
        sinks: pkd::duties::sinks::SinksConfig {
            results_url: results.then(|| format!("sqlite://{}?mode=rwc", dir.path().join("results.db").display())),
            ..Default::default()
        },
        admin_token: None,
        tls: None,
    };
    let stop = CancellationToken::new();
    let listeners = Listeners { client: listener, admin: None, cluster: None };
    let app = app::start(app_config, listeners, stop.clone()).await.unwrap();
    let server = Server { addr, app, _stop: stop.drop_guard(), _dir: dir };
    // Short phases so a whole PK fits in a test: opening 300 ms, battle 3 s.
    server.config("pk_duration", "300,3000,0,600000").await;
    server
}

impl Server {
    /// Anchors `a` and `b` matched into a PK, with `viewer` in `a`'s room, once its
    /// opening (300 ms) is over: gifts count from now on.
    pub(crate) async fn battle(&self, a: u64, b: u64, viewer: u64) -> (Client, Client, Client) {
        let mut source = self.connect(a).await;
        let mut target = self.connect(b).await;
        let mut watcher = self.connect(viewer).await;
        source.enter(a, true).await;
        target.enter(b, true).await;
        source.matching(1, a, a, 0).await;
        assert_eq!(target.matching(1, b, b, 0).await["code"], "902004");
        watcher.enter(a, false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        (source, target, watcher)
    }

    pub(crate) async fn config(&self, key: &str, value: &str) {
        for group in Topology::new(2).unwrap().groups() {
            let action = Action::SetConfig { key: key.into(), value: value.into() };
            let response = self.app.node().propose(group, action).await.unwrap();
            assert_eq!(response, pkd_raft::Response::Done, "{key}={value}");
        }
    }

    pub(crate) async fn connect(&self, user: u64) -> Client {
        let token = token(user, "IN", "android", 300);
        self.connect_with(&format!("Bearer {token}"), "").await.unwrap()
    }

    pub(crate) async fn connect_with(&self, authorization: &str, query: &str) -> Result<Client, String> {
        let mut request = format!("ws://{}/ws{query}", self.addr).into_client_request().unwrap();
        if !authorization.is_empty() {
            request.headers_mut().insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Client { socket, sequence: 0, pushes: Vec::new() }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A client whose socket has a small receive buffer, so that what it leaves unread
    /// fills the connection quickly.
    pub(crate) async fn connect_small_buffer(&self, user: u64) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let mut request = format!("ws://{}/ws", self.addr).into_client_request().unwrap();
        let authorization = format!("Bearer {}", token(user, "IN", "android", 300));
        request.headers_mut().insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (socket, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
        Client { socket, sequence: 0, pushes: Vec::new() }
    }

    /// One HTTP request to the gift API; returns (status, body).
    pub(crate) async fn gifts(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        crate::common::http_json(self.addr, "POST", "/internal/gifts", token, body).await.unwrap()
    }

    pub(crate) async fn gift(&self, id: u64, receiver: u64, sender: u64, beans: i64) -> Value {
        let body = json!({"id": id, "receiver": receiver, "sender": sender, "beans": beans,
                          "senderProfile": {"nickname": format!("viewer{sender}"), "level": 3}});
        let (status, reply) = self.gifts(Some(GIFT_TOKEN), &body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
        reply
    }
}

pub(crate) fn token(user: u64, country: &str, platform: &str, version: u32) -> String {
    let claims = login::Claims {
        user_id: login::UserId::new(user.to_string()).unwrap(),
        expires_at_ms: u64::try_from(pkd::clock::now_ms()).unwrap() + 3_600_000,
        country: Some(login::CountryCode::new(country).unwrap()),
        platform: Some(platform.parse().unwrap()),
        client_version: Some(version),
    };
    login::mint(SECRET, &claims)
}

pub(crate) struct Client {
    pub(crate) socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    pub(crate) sequence: i64,
    /// Pushes received while waiting for replies.
    pub(crate) pushes: Vec<Value>,
}

impl Client {
    pub(crate) async fn next_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next()).await.expect("no message in time");
            match message.expect("connection closed").expect("socket error") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Sends a raw frame and returns the reply (pushes received meanwhile are kept).
    pub(crate) async fn raw(&mut self, frame: String) -> Value {
        self.socket.send(Message::Text(frame.into())).await.unwrap();
        loop {
            let message = self.next_json().await;
            if message["msgType"] == "command" {
                return message;
            }
            self.pushes.push(message);
        }
    }

    pub(crate) async fn command(&mut self, command_id: i64, room: u64, fields: Value) -> Value {
        self.sequence += 1;
        let mut frame = json!({"commandId": command_id, "msgType": "command", "roomId": room,
                               "sequence": self.sequence, "initTime": 1626146346120i64,
                               "logId": format!("t-{}", self.sequence)});
        for (key, value) in fields.as_object().unwrap() {
            frame[key] = value.clone();
        }
        let reply = self.raw(frame.to_string()).await;
        assert_eq!(reply["commandId"], -command_id, "{reply}");
        assert_eq!(reply["sequence"], self.sequence, "{reply}");
        reply
    }

    /// From now on the client only sends (command 44, over and over) and reads nothing;
    /// the task ends once the server has dropped the connection.
    pub(crate) fn stop_reading(self, room: u64) -> tokio::task::JoinHandle<()> {
        let (mut commands, replies) = self.socket.split();
        tokio::spawn(async move {
            let _unread = replies;
            let frame = json!({"commandId": 44, "msgType": "command", "roomId": room, "sequence": 1,
                               "initTime": 1626146346120i64, "logId": "t"})
            .to_string();
            while commands.send(Message::Text(frame.clone().into())).await.is_ok() {}
        })
    }

    pub(crate) async fn enter(&mut self, room: u64, anchor: bool) -> Value {
        self.command(40, room, json!({"type": if anchor { 2 } else { 1 }})).await
    }

    pub(crate) async fn matching(&mut self, kind: i64, room: u64, source: u64, target: u64) -> Value {
        self.command(28, room, json!({"type": kind, "source": source, "target": target})).await
    }

    /// The next push of `push_type`, skipping others.
    pub(crate) async fn push(&mut self, push_type: i64) -> Value {
        if let Some(i) = self.pushes.iter().position(|p| p["type"] == push_type) {
            return self.pushes.remove(i);
        }
        loop {
            let message = self.next_json().await;
            if message["msgType"] == "pub" && message["type"] == push_type {
                return message;
            }
        }
    }

    /// Pushes of `push_type` that arrive within `window`.
    pub(crate) async fn count_pushes(&mut self, push_type: i64, window: Duration) -> Vec<Value> {
        let mut seen: Vec<Value> = self.pushes.drain(..).filter(|p| p["type"] == push_type).collect();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.socket.next()).await {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == push_type {
                    seen.push(value);
                }
            }
        }
        seen
    }
}

#[tokio::test]
async fn upgrades_without_a_valid_token_are_refused() {
    let server = start().await;
    for (authorization, query) in [
        ("", ""),
        ("Bearer nonsense", ""),
        ("Bearer v1.42.1700000000000....uB61b-l5fOLy_ioODKnLR_ooyD4jJo90b8yQpDxbr4g", ""),
        ("Basic dXNlcjpwYXNz", ""),
        ("", "?token=dev:42"),
    ] {
        let err = server.connect_with(authorization, query).await.err().expect("must be refused");
        assert!(err.contains("401"), "{authorization:?} {query:?}: {err}");
    }
    // A well-formed token that expired a second ago, and one signed with another secret.
    let mut expired = login::Claims {
        user_id: login::UserId::new("42").unwrap(),
        expires_at_ms: u64::try_from(pkd::clock::now_ms()).unwrap() - 1_000,
        country: None,
        platform: None,
        client_version: None,
    };
    let stale = login::mint(SECRET, &expired);
    expired.expires_at_ms += 3_600_000;
    let forged = login::mint(b"some other secret entirely", &expired);
    for token in [stale, forged] {
        let err = server.connect_with(&format!("Bearer {token}"), "").await.err().expect("must be refused");
        assert!(err.contains("401"), "{token}: {err}");
    }
    // The query-parameter fallback works with a real token.
    let mut client = server.connect_with("", &format!("?token={}", token(42, "IN", "ios", 1))).await.unwrap();
    let reply = client.command(44, 1, json!({})).await;
    assert_eq!(reply["code"], "000000");
}

#[tokio::test]
async fn a_match_a_pk_with_gifts_and_its_end_reach_every_client() {
    let server = start().await;
    let mut a1 = server.connect(101).await;
    let mut a2 = server.connect(102).await;
    let mut viewer = server.connect(5001).await;
    assert_eq!(a1.enter(101, true).await["result"], Value::Null);
    a2.enter(102, true).await;

    // a1 waits: success and push 13; a2 matches at once: 902004 and the PK's first state.
    let reply = a1.matching(1, 101, 101, 0).await;
    assert_eq!(reply["code"], "000000", "{reply}");
    let started = a1.push(13).await;
    assert_eq!((started["mode"].clone(), started["content"]["msg"].clone()), (json!("u"), json!(101)));
    assert_eq!(a2.matching(1, 102, 102, 0).await["code"], "902004");
    let first = a2.push(10).await;
    assert_eq!(first["content"]["sourceUser"], 101, "the waiting anchor is the source");
    assert_eq!(first["content"]["targetUser"], 102);
    assert_eq!(first["content"]["status"], 0, "opening phase");
    let pk_id = first["content"]["pkId"].as_u64().unwrap();
    assert_eq!(a1.push(10).await["content"]["pkId"], pk_id);

    // Busy anchors get 905033; acting for someone else gets 900006.
    assert_eq!(a1.matching(1, 101, 101, 0).await["code"], "905033");
    assert_eq!(a1.matching(1, 101, 102, 0).await["code"], "900006");

    // A viewer entering the room gets the state in the reply.
    let entered = viewer.enter(101, false).await;
    assert_eq!(entered["result"]["pkId"], pk_id, "{entered}");

    // Gifts only count in the battle; the gift API answers with the engine's codes.
    let early = server.gift(1, 101, 5001, 10).await;
    assert_eq!(early["code"], "905041", "{early}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counted = server.gift(2, 101, 5001, 300).await;
    assert_eq!(counted["result"], json!({"id": 2, "pkId": pk_id, "duplicate": false, "sideBeans": 300}));
    let again = server.gift(2, 101, 5001, 300).await;
    assert_eq!(again["result"]["duplicate"], true);
    assert_eq!(again["result"]["sideBeans"], 300, "a retried gift counts once");
    server.gift(3, 102, 5002, 100).await;

    // The viewer sees the new score, pushed from the change.
    let state = loop {
        let push = viewer.push(10).await;
        if push["content"]["sourceGifts"] == 300 {
            break push;
        }
    };
    assert_eq!(state["content"]["sourceTopGifts"][0]["consume"], 300);
    assert_eq!(state["content"]["sourceTopGifts"][0]["user"]["nickname"], "viewer5001");
    assert_eq!(state["content"]["status"], 1);

    // The battle ends by the leader's timer: final state, winner, rooms released.
    let end = loop {
        let push = viewer.push(10).await;
        if push["content"]["status"] == 2 {
            break push;
        }
    };
    assert_eq!(end["content"]["winner"], 101);
    assert_eq!(end["content"]["sourceGifts"], 300);
    assert_eq!(end["content"]["targetGifts"], 100);
    let late = server.gift(4, 101, 5001, 1).await;
    assert!(late["code"] == "905040" || late["code"] == "905041", "{late}");
    // Rooms are free again once the lobby applied the release.
    let mut code = String::new();
    for _ in 0..50 {
        code = a1.matching(1, 101, 101, 0).await["code"].as_str().unwrap().to_owned();
        if code != "905033" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, "000000");
}

/// Every page of PK `pk`'s ledger through `GET /api/pks/{id}/gifts`, `limit` at a time,
/// following `next`; and the totals of the first page (later ones have none).
async fn whole_ledger(server: &Server, pk: u64, limit: u32) -> (Vec<Value>, Value) {
    let user = token(5999, "IN", "android", 300);
    let mut gifts = Vec::new();
    let mut totals = Value::Null;
    let mut after = 0;
    loop {
        let path = format!("/api/pks/{pk}/gifts?after={after}&limit={limit}");
        let (status, page) = crate::common::http_json(server.addr, "GET", &path, Some(&user), "").await.unwrap();
        assert_eq!(status, 200, "{page}");
        gifts.extend(page["gifts"].as_array().unwrap().iter().cloned());
        if after == 0 {
            totals = page["totals"].clone();
        } else {
            assert_eq!(page["totals"], Value::Null, "{page}");
        }
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return (gifts, totals),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_pks_ledger_lists_each_counted_gift_once() {
    let server = start_with_results().await;
    let (_source, _target, _viewer) = server.battle(1401, 1402, 14_001).await;
    // Counted: 11 and 12 to the source, 13 to the target, then 14 and 15 in a batch that
    // also retries 11. Not counted: 11 again, a gift of no beans, a gift to no side.
    let first = server.gift(11, 1401, 14_001, 100).await;
    let pk = first["result"]["pkId"].as_u64().unwrap();
    server.gift(12, 1401, 14_002, 250).await;
    server.gift(13, 1402, 14_001, 40).await;
    assert_eq!(server.gift(11, 1401, 14_001, 100).await["result"]["duplicate"], true);
    assert_eq!(server.gift(16, 1401, 14_003, 0).await["code"], "905043");
    assert_eq!(server.gift(17, 1499, 14_003, 5).await["code"], "905040");
    let batch = json!({ "gifts": [{ "id": 14, "receiver": 1402, "sender": 14_002, "beans": 60 },
                                  { "id": 11, "receiver": 1401, "sender": 14_001, "beans": 100 },
                                  { "id": 15, "receiver": 1401, "sender": 14_001, "beans": 7 }] });
    let (status, reply) = server.gifts(Some(GIFT_TOKEN), &batch.to_string()).await;
    assert_eq!(status, 200, "{reply}");
    let duplicates: Vec<bool> =
        reply["result"].as_array().unwrap().iter().map(|entry| entry["duplicate"] == true).collect();
    assert_eq!(duplicates, [false, true, false], "{reply}");

    // Once the PK has settled (a 3 s battle) and its result is stored, the ledger holds
    // every counted gift once, by id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (gifts, totals) = loop {
        let (gifts, totals) = whole_ledger(&server, pk, 2).await;
        if !gifts.is_empty() {
            break (gifts, totals);
        }
        assert!(tokio::time::Instant::now() < deadline, "PK {pk}'s ledger never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listed: Vec<(u64, u64, u64, i64)> = gifts
        .iter()
        .map(|gift| {
            let field = |name: &str| gift[name].as_u64().unwrap();
            (field("giftId"), field("sender"), field("receiver"), gift["beans"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        listed,
        [
            (11, 14_001, 1401, 100),
            (12, 14_002, 1401, 250),
            (13, 14_001, 1402, 40),
            (14, 14_002, 1402, 60),
            (15, 14_001, 1401, 7),
        ]
    );
    let now = pkd::clock::now_ms();
    assert!(gifts.iter().all(|gift| gift["at"].as_i64().is_some_and(|at| now - 60_000 < at && at <= now)), "{gifts:?}");
    assert_eq!(
        totals,
        json!([{ "receiver": 1401, "gifts": 3, "beans": 357 }, { "receiver": 1402, "gifts": 2, "beans": 100 }])
    );
    // The same sums as the PK's result in the anchor's history.
    let user = token(5999, "IN", "android", 300);
    let (_, history) =
        crate::common::http_json(server.addr, "GET", "/api/anchors/1401/pks", Some(&user), "").await.unwrap();
    let record = &history["records"][0];
    assert_eq!((record["pkId"].as_u64(), record["gifts"].as_i64()), (Some(pk), Some(357)), "{history}");
    assert_eq!(record["competitorGifts"], 100);
    // One page of everything says so; without a login token, nothing.
    let (all, _) = whole_ledger(&server, pk, 1000).await;
    assert_eq!(all, gifts);
    let path = format!("/api/pks/{pk}/gifts");
    assert_eq!(crate::common::http_json(server.addr, "GET", &path, None, "").await.unwrap().0, 401);
}

#[tokio::test]
async fn a_gift_storm_is_coalesced_into_few_pushes() {
    let server = start().await;
    let (_a1, _a2, mut viewer) = server.battle(201, 202, 6001).await;
    // 100 gifts in one batch request.
    let gifts: Vec<Value> =
        (1..=100).map(|i| json!({"id": 10_000 + i, "receiver": 201, "sender": 7000 + i % 7, "beans": 2})).collect();
    let (status, reply) = server.gifts(Some(GIFT_TOKEN), &json!({"gifts": gifts}).to_string()).await;
    assert_eq!(status, 200);
    let results = reply["result"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| r["code"] == "000000"), "{reply}");
    // With a 500 ms cool-down, 1.2 s of pushes holds a handful, not one per gift.
    let pushes = viewer.count_pushes(10, Duration::from_millis(1200)).await;
    assert!(!pushes.is_empty() && pushes.len() <= 4, "{} pushes", pushes.len());
    assert_eq!(pushes.last().unwrap()["content"]["sourceGifts"], 200);
}

#[tokio::test]
async fn push_10_keeps_the_cooldown_under_steady_gifts_and_the_period_when_quiet() {
    let server = start().await;
    server.config("pk_duration", "300,20000,0,600000").await;
    let (_a1, _a2, mut viewer) = server.battle(801, 802, 8001).await;
    // Quiet: a push every period (2 s), though nothing changes.
    let quiet = viewer.count_pushes(10, Duration::from_millis(4500)).await;
    assert!(quiet.len() >= 2, "{} pushes in 4.5 s", quiet.len());
    // A gift every 100 ms for 3 s: pushes keep to the cool-down (500 ms) between any two,
    // the periodic ones included, and the last one shows every gift.
    let gifts = async {
        for i in 0..30 {
            server.gift(20_000 + i, 801, 8100 + i % 3, 5).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (_, busy) = tokio::join!(gifts, viewer.count_pushes(10, Duration::from_millis(3600)));
    assert!(busy.len() >= 3, "{} pushes in 3.6 s of gifts", busy.len());
    let versions: Vec<i64> = busy.iter().map(|push| push["version"].as_i64().unwrap()).collect();
    // `version` is the server's clock in whole ms when the push was rendered.
    assert!(versions.windows(2).all(|w| w[1] - w[0] >= 498), "pushes closer than the cool-down: {versions:?}");
    let last = loop {
        let push = viewer.push(10).await;
        if push["content"]["sourceGifts"] == 150 {
            break push;
        }
    };
    assert_eq!(last["content"]["status"], 1);
}

#[tokio::test]
async fn the_gift_api_refuses_bad_requests_without_applying_anything() {
    let server = start().await;
    let (status, reply) = server.gifts(None, r#"{"id":1,"receiver":1,"sender":2,"beans":5}"#).await;
    assert_eq!((status, reply["code"].clone()), (401, json!("900005")));
    let (status, _) =
        server.gifts(Some("wrong-token-0123456789"), r#"{"id":1,"receiver":1,"sender":2,"beans":5}"#).await;
    assert_eq!(status, 401);
    for (body, code) in [
        ("{not json", "900001"),
        (r#"{"id":"1","receiver":1,"sender":2,"beans":5}"#, "900003"),
        (r#"{"id":0,"receiver":1,"sender":2,"beans":5}"#, "900003"),
        (r#"{"id":1,"receiver":-1,"sender":2,"beans":5}"#, "900003"),
        (r#"{"id":1,"receiver":1,"beans":5}"#, "900003"),
        (r#"{"id":1,"receiver":1,"sender":2,"beans":5,"mint":true}"#, "900003"),
    ] {
        let (status, reply) = server.gifts(Some(GIFT_TOKEN), body).await;
        assert_eq!((status, reply["code"].clone()), (400, json!(code)), "{body}");
    }
    let (status, reply) = server.gifts(Some(GIFT_TOKEN), r#"{"id":1,"receiver":1,"sender":2,"beans":5}"#).await;
    assert_eq!((status, reply["code"].clone()), (200, json!("905040")), "nobody is in a PK");
    let too_many: Vec<Value> = (1..=1001).map(|i| json!({"id": i, "receiver": 1, "sender": 2, "beans": 1})).collect();
    let (status, _) = server.gifts(Some(GIFT_TOKEN), &json!({"gifts": too_many}).to_string()).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn bad_frames_get_error_replies_and_the_connection_stays_usable() {
    let server = start().await;
    let mut client = server.connect(301).await;
    let oversized = format!(r#"{{"commandId":44,"msgType":"command","sequence":1,"pad":"{}"}}"#, "x".repeat(9000));
    for (frame, code) in [
        ("{nope".to_owned(), "900001"),
        ("[1,2]".to_owned(), "900001"),
        (r#"{"commandId":99,"msgType":"command","sequence":7}"#.to_owned(), "900002"),
        (
            r#"{"commandId":28,"msgType":"command","sequence":8,"roomId":301,"type":"1","source":301}"#.to_owned(),
            "900003",
        ),
        (r#"{"commandId":28,"msgType":"command","sequence":9,"roomId":301,"type":1}"#.to_owned(), "900003"),
        (
            r#"{"commandId":28,"msgType":"command","sequence":10,"roomId":301,"type":1,"source":-5}"#.to_owned(),
            "900003",
        ),
        (oversized, "900004"),
    ] {
        let reply = client.raw(frame.clone()).await;
        assert_eq!(reply["code"], code, "{frame:.80}: {reply}");
    }
    assert_eq!(client.command(44, 1, json!({})).await["code"], "000000");
    // Nothing reached the engine.
    let waiting = server.app.node().lobby().read(|lobby| lobby.summary().waiting.len());
    assert_eq!(waiting, 0);
}

#[tokio::test]
async fn a_flood_is_answered_with_rate_limit_replies() {
    let server = start().await;
    let mut client = server.connect(401).await;
    let mut limited = 0;
    for i in 0..80 {
        // Malformed frames count too: a flood of garbage is limited like any other.
        let reply = if i % 2 == 0 { client.command(44, 1, json!({})).await } else { client.raw("{x".into()).await };
        if reply["code"] == "900007" {
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 80 rate-limited");
    // The limit refills: after a pause the connection is served again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.command(44, 1, json!({})).await["code"], "000000");
}

#[tokio::test]
async fn a_silent_connection_is_closed_as_idle() {
    let server = start_with(|config| config.idle_timeout = Duration::from_millis(600)).await;
    let mut client = server.connect(451).await;
    assert_eq!(client.command(44, 1, json!({})).await["code"], "000000");
    // The client stops reading (so it answers no ping) and sends nothing.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = client.socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|frame| u16::from(frame.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("no close frame");
    assert_eq!(close, Some(pkd::gateway::CLOSE_IDLE));
}

/// Waits (at most a minute) for `writer`, a client that stopped reading, to find its
/// connection dropped by the server.
async fn dropped(writer: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the server still holds a connection that reads nothing")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let server = start_with(|config| config.send_timeout = Duration::from_millis(500)).await;
    let client = server.connect_small_buffer(460).await;
    assert_eq!(server.app.gateway().hub().session_count(), 1);
    // Its replies fill the connection; after 500 ms without progress the session gives up.
    dropped(client.stop_reading(460)).await;
    assert_eq!(server.app.gateway().hub().session_count(), 0);
}

#[tokio::test]
async fn a_viewer_whose_pushes_pile_up_is_dropped() {
    // A send timeout far beyond the test: what drops the viewer is its full push queue.
    let server = start_with(|config| {
        config.send_timeout = Duration::from_secs(600);
        config.queue_capacity = 2;
    })
    .await;
    let (_source, _target, _watcher) = server.battle(461, 462, 463).await;
    let mut viewer = server.connect_small_buffer(464).await;
    assert_eq!(viewer.enter(461, false).await["code"], "000000");
    let writer = viewer.stop_reading(461);
    // Gifts keep the scoreboard changing, so pushes for the viewer keep coming.
    let gifts = async {
        for id in 1.. {
            server.gift(id, 461, 9_000 + id, 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = dropped(writer) => {}
        _ = gifts => unreachable!(),
    }
    assert_eq!(server.app.gateway().hub().session_count(), 3, "only the viewer that stopped reading goes");
}

#[tokio::test]
async fn command_27_returns_a_verifiable_rtm_token_to_the_anchors_of_a_running_pk_only() {
    let server = start().await;
    // Outside a PK: refused with 905047, no token.
    let mut client = server.connect(501).await;
    let refused = client.command(27, 501, json!({})).await;
    assert_eq!(refused["code"], "905047", "{refused}");
    assert_eq!(refused["result"], Value::Null);

    let (mut source, _target, mut viewer) = server.battle(501, 502, 5010).await;
    let reply = source.command(27, 501, json!({})).await;
    assert_eq!(reply["code"], "000000", "{reply}");
    let token = reply["result"].as_str().unwrap();
    let claims = pkd::tokens::rtm::verify(token, CERTIFICATE).unwrap();
    assert_eq!(claims.rtm().unwrap().0, "501");
    assert_eq!(claims.expire_seconds, 600, "the 4th value of pk_duration");
    // A viewer of the PK's room is no anchor of it.
    assert_eq!(viewer.command(27, 501, json!({})).await["code"], "905047");
}

#[tokio::test]
async fn an_anchor_leaving_mid_pk_ends_it_abnormally_after_the_grace_period() {
    let server = start().await;
    server.config("pk_duration", "300,20000,0,600000").await;
    server.config("pk_limits", "{'anchorGraceMs':500}").await;
    let mut a1 = server.connect(601).await;
    let mut a2 = server.connect(602).await;
    let mut viewer = server.connect(6100).await;
    a1.enter(601, true).await;
    a2.enter(602, true).await;
    a1.matching(1, 601, 601, 0).await;
    a2.matching(1, 602, 602, 0).await;
    viewer.enter(601, false).await;
    drop(a2);
    let end = loop {
        let push = viewer.push(10).await;
        if push["content"]["status"] == 3 {
            break push;
        }
    };
    assert_eq!(end["content"]["targetOnline"], false);
    assert_eq!(end["content"]["winner"], 0);
}

impl Server {
    async fn connect_as(&self, user: u64, country: &str, platform: &str, version: u32) -> Client {
        let token = token(user, country, platform, version);
        self.connect_with(&format!("Bearer {token}"), "").await.unwrap()
    }
}

#[tokio::test]
async fn invitations_the_accept_race_refusals_and_give_up_over_websocket() {
    let server = start().await;
    server.config("pk_config", "{'interveningTime':600,'endTime':4000,'inviteNum':2,'inviteColdDown':60000}").await;
    // Four live anchors who could be invited, in the order they went live.
    let mut invitees = Vec::new();
    for user in [702, 703, 704, 705] {
        let mut client = server.connect(user).await;
        client.enter(user, true).await;
        invitees.push(client);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut inviter = server.connect(701).await;
    inviter.enter(701, true).await;
    assert_eq!(inviter.matching(1, 701, 701, 0).await["code"], "000000");
    // After interveningTime the first two are invited (push 12, mode "u").
    for client in &mut invitees[..2] {
        let invitation = client.push(12).await;
        assert_eq!((invitation["mode"].clone(), invitation["content"]["source"].clone()), (json!("u"), json!(701)));
    }
    // Both refuse: a new batch goes to the next two.
    assert_eq!(invitees[0].matching(3, 702, 701, 702).await["code"], "000000");
    assert_eq!(invitees[1].matching(3, 703, 701, 703).await["code"], "000000");
    for client in &mut invitees[2..] {
        assert_eq!(client.push(12).await["content"]["source"], 701);
    }
    // They race to accept: one wins, the other is told it was taken.
    let first = invitees[2].matching(2, 704, 701, 704).await;
    let second = invitees[3].matching(2, 705, 701, 705).await;
    assert_eq!(first["code"], "902004", "{first}");
    assert_eq!(second["code"], "902003", "{second}");
    // Answering for someone else is refused.
    assert_eq!(invitees[0].matching(2, 702, 701, 703).await["code"], "900006");
    let state = inviter.push(10).await;
    assert_eq!(state["content"]["targetUser"], 704);

    // Give-up: nobody to invite (all cooling down or busy), so after endTime, push 14.
    let mut lonely = server.connect(706).await;
    lonely.enter(706, true).await;
    assert_eq!(lonely.matching(1, 706, 706, 0).await["code"], "000000");
    let failed = lonely.push(14).await;
    assert_eq!(failed["content"]["source"], 706, "{failed}");
    // Stop when not matching.
    assert_eq!(lonely.matching(4, 706, 706, 0).await["code"], "902006");
}

#[tokio::test]
async fn filters_versions_and_the_pk_switch_over_websocket() {
    let server = start().await;
    // Country filter, both ways: an IN anchor and a PK anchor never meet.
    let mut india = server.connect_as(711, "IN", "android", 300).await;
    let mut pakistan = server.connect_as(712, "PK", "android", 300).await;
    india.enter(711, true).await;
    pakistan.enter(712, true).await;
    assert_eq!(india.matching(1, 711, 711, 0).await["code"], "000000");
    assert_eq!(pakistan.matching(1, 712, 712, 0).await["code"], "000000", "queued, not matched");
    let mut other = server.connect_as(713, "US", "ios", 1).await;
    other.enter(713, true).await;
    assert_eq!(other.matching(1, 713, 713, 0).await["code"], "902004", "takes the longest waiter it may meet");
    // Version gate: android below 207 cannot match.
    let mut old = server.connect_as(714, "US", "android", 206).await;
    old.enter(714, true).await;
    assert_eq!(old.matching(1, 714, 714, 0).await["code"], "902002");
    // The switch: off stops new matching and drops the waiting (push 14); on again works.
    server.config("pk_enable", "false").await;
    let failed = pakistan.push(14).await;
    assert_eq!(failed["content"]["source"], 712);
    let mut late = server.connect_as(715, "US", "ios", 1).await;
    late.enter(715, true).await;
    assert_eq!(late.matching(1, 715, 715, 0).await["code"], "902001");
    server.config("pk_enable", "true").await;
    assert_eq!(late.matching(1, 715, 715, 0).await["code"], "000000");
}
