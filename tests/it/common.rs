//! What the process tests share (`processes.rs`, `flows.rs`): a three-node
//! `LocalCluster`, waits on the admin API, a WebSocket client speaking the app's
//! protocol with `dev:` or signed login tokens, and the gift API.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use pkd::tokens::login;
use pkd_cluster::api::NodeStatus;
use pkd_cluster::{AdminClient, LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

/// How long after a PK's end time its end must reach a client, even across a failover.
pub const FAILOVER_BOUND: Duration = Duration::from_secs(6);
/// How long a client waits for one message.
pub const WAIT: Duration = Duration::from_secs(15);
/// The login secret every node of [`start_cluster`] shares with the tests.
pub const LOGIN_SECRET: &str = "process-test-login-secret-0123456789";

/// The Redis database the cache tests own (`PKD_TEST_REDIS_URL`, database 9 by default):
/// the source's key names cannot be prefixed, so those tests take turns.
pub static REDIS_DATABASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn now_ms() -> i64 {
    pkd::clock::now_ms()
}

/// Three nodes, two arenas, `dev:` tokens and tokens signed with [`LOGIN_SECRET`].
pub fn cluster_options() -> LocalOptions {
    let mut options = LocalOptions { arenas: 2, ..LocalOptions::new(env!("CARGO_BIN_EXE_pkd")) };
    options.extra_args.extend(["--login-secret".to_owned(), LOGIN_SECRET.to_owned()]);
    options
}

/// Starts three nodes (blocking the test's worker while the processes come up) and waits
/// until every group's leadership has settled where the balancer wants it, so that no
/// hand-over (client commands answered 900008 meanwhile) happens unless a test makes one.
pub async fn start_cluster() -> anyhow::Result<LocalCluster> {
    let cluster = start_cluster_with(cluster_options())?;
    for group in 0..=2 {
        settled_leader(&cluster, group).await?;
    }
    Ok(cluster)
}

/// Starts the nodes `options` describes and returns once each listens.
pub fn start_cluster_with(options: LocalOptions) -> anyhow::Result<LocalCluster> {
    Ok(tokio::task::block_in_place(|| LocalCluster::start(options))?)
}

/// Sets the PK's phases (opening 300 ms, then `battle_ms`) in every group.
pub async fn short_pks(admin: &AdminClient, battle_ms: u64) -> anyhow::Result<()> {
    set_config(admin, "pk_duration", &format!("300,{battle_ms},0,600000")).await
}

/// Sets a `t_config` row in every group (the lobby and both arenas).
pub async fn set_config(admin: &AdminClient, key: &str, value: &str) -> anyhow::Result<()> {
    let groups = admin.set_config(key, value).await.with_context(|| format!("{key}={value}"))?;
    ensure!(groups.groups == vec![0, 1, 2], "{key} set in {:?}", groups.groups);
    Ok(())
}

pub async fn statuses(cluster: &LocalCluster, ids: &[u64]) -> anyhow::Result<Vec<NodeStatus>> {
    let mut all = Vec::new();
    for &id in ids {
        all.push(cluster.admin(id)?.with_timeout(Duration::from_secs(3)).status().await?);
    }
    Ok(all)
}

/// Waits until every node in `ids` reports the same applied index in every group.
pub async fn converged(cluster: &LocalCluster, ids: &[u64], limit: Duration) -> anyhow::Result<Vec<NodeStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        let all = statuses(cluster, ids).await?;
        let same = all[0].groups.iter().all(|group| {
            group.applied.is_some()
                && all.iter().all(|status| status.group(group.id).is_some_and(|other| other.applied == group.applied))
        });
        if same {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!("applied indexes did not converge: {all:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of `group` as the nodes in `ids` agree on it.
pub async fn agreed_leader(cluster: &LocalCluster, ids: &[u64], group: u64, limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let all = statuses(cluster, ids).await?;
        let leaders: Vec<Option<u64>> =
            all.iter().map(|status| status.group(group).and_then(|group| group.leader)).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|other| other == &Some(*leader))
            && ids.contains(leader)
        {
            return Ok(*leader);
        }
        if Instant::now() > deadline {
            bail!("no agreed leader of group {group}: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `group`'s leadership has settled on its preferred node (the balancer's
/// choice among voters 1, 2, 3: the lobby on node 1, arena 1 on node 2, arena 2 on node 3),
/// so that it does not move on its own during the test.
pub async fn settled_leader(cluster: &LocalCluster, group: u64) -> anyhow::Result<u64> {
    let preferred = [1, 2, 3][(group % 3) as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = agreed_leader(cluster, &[1, 2, 3], group, Duration::from_secs(5)).await?;
        if leader == preferred {
            return Ok(leader);
        }
        ensure!(Instant::now() < deadline, "group {group} stays led by {leader}, not {preferred}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a signed login token says about an anchor, for the matchmaking filters.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub country: &'static str,
    pub platform: &'static str,
    pub version: u32,
}

impl Profile {
    pub const fn new(country: &'static str, platform: &'static str, version: u32) -> Profile {
        Profile { country, platform, version }
    }
}

/// A login token for `user`, signed with [`LOGIN_SECRET`], valid for an hour.
pub fn login_token(user: u64, profile: Profile) -> anyhow::Result<String> {
    let claims = login::Claims {
        user_id: login::UserId::new(user.to_string())?,
        expires_at_ms: u64::try_from(now_ms())? + 3_600_000,
        country: Some(login::CountryCode::new(profile.country)?),
        platform: Some(profile.platform.parse().map_err(|_| anyhow::anyhow!("platform {}", profile.platform))?),
        client_version: Some(profile.version),
    };
    Ok(login::mint(LOGIN_SECRET.as_bytes(), &claims))
}

/// A WebSocket client of one node, acting as one user.
pub struct Client {
    pub user: u64,
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    sequence: i64,
    /// Pushes received while waiting for something else, with the wall clock when each arrived.
    pushes: Vec<(i64, Value)>,
}

impl Client {
    /// Connects to node `node` with a `dev:` token (no country, platform or version).
    pub async fn connect(cluster: &LocalCluster, node: u64, user: u64) -> anyhow::Result<Client> {
        Client::connect_with_token(cluster, node, user, &format!("dev:{user}")).await
    }

    /// Connects to node `node` with a signed token carrying `profile`.
    pub async fn connect_as(cluster: &LocalCluster, node: u64, user: u64, profile: Profile) -> anyhow::Result<Client> {
        Client::connect_with_token(cluster, node, user, &login_token(user, profile)?).await
    }

    async fn connect_with_token(cluster: &LocalCluster, node: u64, user: u64, token: &str) -> anyhow::Result<Client> {
        let address = cluster.node(node)?.client_addr;
        let mut request = format!("ws://{address}/ws").into_client_request()?;
        request.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("user {user} connecting to node {node}"))?;
        Ok(Client { user, socket, sequence: 0, pushes: Vec::new() })
    }

    /// The next JSON message, with the wall clock when it arrived.
    pub async fn next_json(&mut self, limit: Duration) -> anyhow::Result<(i64, Value)> {
        loop {
            let message = tokio::time::timeout(limit, self.socket.next()).await.context("no message in time")?;
            match message.context("connection closed")?? {
                Message::Text(text) => return Ok((now_ms(), serde_json::from_str(&text)?)),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Sends a command and returns its reply; pushes that arrive meanwhile are kept. A
    /// command answered 900008 (no leader reachable, e.g. during an election; nothing was
    /// applied) is sent again, as app clients do.
    pub async fn command(&mut self, command_id: i64, room: u64, fields: Value) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.command_once(command_id, room, &fields).await?;
            if reply["code"] != "900008" || Instant::now() > deadline {
                return Ok(reply);
            }
            eprintln!("user {}: command {command_id} answered {reply}; retrying", self.user);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn command_once(&mut self, command_id: i64, room: u64, fields: &Value) -> anyhow::Result<Value> {
        self.sequence += 1;
        let mut frame = json!({"commandId": command_id, "msgType": "command", "roomId": room,
                               "sequence": self.sequence, "initTime": 1626146346120i64,
                               "logId": format!("{}-{}", self.user, self.sequence)});
        if let (Some(frame), Some(fields)) = (frame.as_object_mut(), fields.as_object()) {
            frame.extend(fields.clone());
        }
        self.socket.send(Message::Text(frame.to_string().into())).await?;
        loop {
            let (at, message) = self.next_json(WAIT).await.with_context(|| format!("user {}", self.user))?;
            if message["msgType"] == "command" && message["sequence"] == self.sequence {
                ensure!(message["commandId"] == -command_id, "a reply to another command: {message}");
                return Ok(message);
            }
            self.pushes.push((at, message));
        }
    }

    /// Command 40: enters `room` as its anchor or as a viewer; the reply's `result` is
    /// the room's PK state.
    pub async fn enter(&mut self, room: u64, anchor: bool) -> anyhow::Result<Value> {
        self.command(40, room, json!({"type": if anchor { 2 } else { 1 }})).await
    }

    /// Command 28 type 1: `anchor` starts matching in `room`.
    pub async fn matching(&mut self, room: u64, anchor: u64) -> anyhow::Result<Value> {
        self.command(28, room, json!({"type": 1, "source": anchor, "target": 0})).await
    }

    /// Command 28 type 1 for this client's own user and room: the reply's code.
    pub async fn start(&mut self) -> anyhow::Result<String> {
        let user = self.user;
        code_of(&self.matching(user, user).await?)
    }

    /// Command 28 type 4 for this client's own user: the reply's code.
    pub async fn stop(&mut self) -> anyhow::Result<String> {
        let user = self.user;
        code_of(&self.command(28, user, json!({"type": 4, "source": user, "target": 0})).await?)
    }

    /// Command 28 type 2 (accept) or 3 (refuse) of `inviter`'s invitation: the reply's code.
    pub async fn answer(&mut self, kind: i64, inviter: u64) -> anyhow::Result<String> {
        let user = self.user;
        code_of(&self.command(28, user, json!({"type": kind, "source": inviter, "target": user})).await?)
    }

    /// The next state push (type 10) of `pk` with `status`, and when it arrived.
    pub async fn state(&mut self, pk: u64, status: u64, limit: Duration) -> anyhow::Result<(i64, Value)> {
        let wanted = |push: &Value| {
            push["msgType"] == "pub"
                && push["type"] == 10
                && push["content"]["pkId"] == pk
                && push["content"]["status"] == status
        };
        self.wait_for(limit, wanted).await.with_context(|| format!("no push of pk {pk} status {status}"))
    }

    /// The next push (kept or new) that `wanted` accepts; earlier ones are dropped.
    pub async fn wait_for(&mut self, limit: Duration, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<(i64, Value)> {
        if let Some(index) = self.pushes.iter().position(|(_, push)| wanted(push)) {
            return Ok(self.pushes.remove(index));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, push) = self.next_json(left).await.with_context(|| format!("user {}", self.user))?;
            if wanted(&push) {
                return Ok((at, push));
            }
        }
    }

    /// Every push (kept or new) up to and including the first one `wanted` accepts.
    pub async fn pushes_until(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let mut seen = Vec::new();
        while !self.pushes.is_empty() {
            let (_, push) = self.pushes.remove(0);
            let found = wanted(&push);
            seen.push(push);
            if found {
                return Ok(seen);
            }
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, push) = self.next_json(left).await.with_context(|| format!("user {}", self.user))?;
            let found = wanted(&push);
            seen.push(push);
            if found {
                return Ok(seen);
            }
        }
    }

    /// Every state push of `pk` that arrives within `window` (and those already kept).
    pub async fn states_within(&mut self, pk: u64, window: Duration) -> Vec<Value> {
        let mut seen = self.pushes_within(window).await;
        seen.retain(|push| push["type"] == 10 && push["content"]["pkId"] == pk);
        seen
    }

    /// Every push that arrives within `window`, after those already kept.
    pub async fn pushes_within(&mut self, window: Duration) -> Vec<Value> {
        let mut seen: Vec<Value> = self.pushes.drain(..).map(|(_, push)| push).collect();
        let deadline = Instant::now() + window;
        while let Ok((_, push)) = self.next_json(deadline.saturating_duration_since(Instant::now())).await {
            seen.push(push);
        }
        seen
    }

    /// Every push kept so far and arriving within `window`; all stay kept for later waits.
    pub async fn watch_within(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        while let Ok(arrived) = self.next_json(deadline.saturating_duration_since(Instant::now())).await {
            self.pushes.push(arrived);
        }
        self.pushes.iter().map(|(_, push)| push.clone()).collect()
    }

    /// The next push of `push_type` (kept or new), and when it arrived.
    pub async fn push(&mut self, push_type: i64) -> anyhow::Result<(i64, Value)> {
        self.wait_for(WAIT, |push| push["msgType"] == "pub" && push["type"] == push_type)
            .await
            .with_context(|| format!("no push of type {push_type}"))
    }
}

/// The `code` of a reply.
pub fn code_of(reply: &Value) -> anyhow::Result<String> {
    Ok(reply["code"].as_str().with_context(|| format!("no code in {reply}"))?.to_owned())
}

/// A running PK between anchors `first` and `first + 1`, whose clients are on `node`.
pub struct Pk {
    pub id: u64,
    pub end_time: i64,
    pub source: Client,
    pub target: Client,
}

/// Matches two anchors over WebSocket on `node` and returns their PK.
pub async fn start_pk(cluster: &LocalCluster, node: u64, first: u64) -> anyhow::Result<Pk> {
    let (a, b) = (first, first + 1);
    let mut source = Client::connect(cluster, node, a).await?;
    let mut target = Client::connect(cluster, node, b).await?;
    source.enter(a, true).await?;
    target.enter(b, true).await?;
    let queued = source.matching(a, a).await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let matched = target.matching(b, b).await?;
    ensure!(matched["code"] == "902004", "{matched}");
    let (_, first_state) = target.push(10).await?;
    let id = first_state["content"]["pkId"].as_u64().context("pkId")?;
    let end_time = first_state["content"]["endTime"].as_i64().context("endTime")?;
    Ok(Pk { id, end_time, source, target })
}

/// The gift API of node `node`.
pub fn gift_api(cluster: &LocalCluster, node: u64) -> anyhow::Result<AdminClient> {
    Ok(AdminClient::new(cluster.node(node)?.client_addr.to_string(), cluster.options().gift_token.clone()))
}

/// Sends one gift through node `node`'s gift API and returns the engine's reply.
pub async fn gift(
    cluster: &LocalCluster,
    node: u64,
    id: u64,
    receiver: u64,
    sender: u64,
    beans: i64,
) -> anyhow::Result<Value> {
    let body = json!({"id": id, "receiver": receiver, "sender": sender, "beans": beans});
    Ok(post_gift(cluster, node, &body).await?.0)
}

/// Posts one gift to node `node`'s gift API as the gift service does: an answer 900008
/// (HTTP 503: no leader reachable, e.g. during an election) is retried with the same id.
/// Returns the engine's reply, and whether it took a retry (then the gift may have
/// counted at the first try, and the reply says `duplicate`).
pub async fn post_gift(cluster: &LocalCluster, node: u64, body: &Value) -> anyhow::Result<(Value, bool)> {
    let api = gift_api(cluster, node)?;
    let deadline = Instant::now() + WAIT;
    let mut retried = false;
    loop {
        match api.call::<Value>("POST", "/internal/gifts", Some(body)).await {
            Err(pkd_cluster::ClientError::Refused { status: 503, message }) if Instant::now() < deadline => {
                eprintln!("gift {} through node {node}: {message}; retrying", body["id"]);
            }
            other => return Ok((other?, retried)),
        }
        retried = true;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The arena group that hosts `pk` with two arenas.
pub fn arena_of(pk: u64) -> u64 {
    u64::from(pkd_raft::arena_for(pkd_raft::PkId(pk), 2)) + 1
}

/// Checks that `pk` ended exactly once, no earlier than its end time and within the
/// failover bound: the first end push, then a quiet look at what follows.
pub async fn ends_once(client: &mut Client, pk: u64, end_time: i64) -> anyhow::Result<Value> {
    let limit = Duration::from_millis(u64::try_from(end_time - now_ms()).unwrap_or(0)) + FAILOVER_BOUND;
    let (arrived, end) = client.state(pk, 2, limit).await?;
    ensure!(arrived >= end_time, "the end arrived at {arrived}, before the end time {end_time}");
    ensure!(
        arrived <= end_time + FAILOVER_BOUND.as_millis() as i64,
        "the end arrived {} ms after the end time",
        arrived - end_time
    );
    eprintln!("pk {pk} ended; its end reached the client {} ms after its end time", arrived - end_time);
    // Any later push of this PK repeats the same final state: one end, one result.
    for later in client.states_within(pk, Duration::from_millis(1_500)).await {
        ensure!(later["content"]["status"] == 2, "a state after the end: {later}");
        for field in ["winner", "sourceGifts", "targetGifts", "endTime"] {
            ensure!(later["content"][field] == end["content"][field], "a second, different end: {later} vs {end}");
        }
    }
    Ok(end)
}

/// One HTTP/1.1 request (`Connection: close`) over `stream`, with a bearer token if given:
/// the status and the body. A TLS peer may close without a close_notify once it has
/// answered; what it sent stands.
pub async fn http_over(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = bearer.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: pkd\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.get(9..12).with_context(|| format!("no status line in {response:?}"))?.parse()?;
    Ok((status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()))
}

/// [`http_over`] a new connection to `address`.
pub async fn http(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    http_over(TcpStream::connect(address).await?, method, path, bearer, body).await
}

/// [`http`], with the body read as JSON (`null` if it is not).
pub async fn http_json(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let (status, body) = http(address, method, path, bearer, body).await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}
