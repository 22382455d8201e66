//! TLS with certificates the test makes (`openssl`): three `pkd serve` processes with
//! HTTPS and `wss://` on their client and admin listeners and TLS on every node-to-node
//! link run a PK for clients spread over them; plain clients, clients that trust another
//! CA and a peer that skips TLS are refused. And the results store over TLS to MariaDB.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use pkd_cluster::{LocalCluster, LocalOptions};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::WAIT;

/// A CA and a certificate it signs for 127.0.0.1–127.0.0.3 and `localhost`.
struct Certificates {
    ca: PathBuf,
    node: PathBuf,
    node_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    ensure!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// Makes a CA named `name` and a node certificate it signs, in `dir`.
fn make_certificates(dir: &Path, name: &str) -> anyhow::Result<Certificates> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-days", "2", "-subj", "/CN=pkd test CA", "-keyout", &ca_key, "-out", &ca]);
    openssl(dir, &args)?;
    let (node, key, request) = (format!("{name}-node.pem"), format!("{name}-node.key"), format!("{name}-node.csr"));
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-subj", "/CN=pkd node", "-keyout", &key, "-out", &request]);
    openssl(dir, &args)?;
    let extensions = dir.join(format!("{name}-san.cnf"));
    std::fs::write(&extensions, "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,DNS:localhost\n")?;
    let extensions = extensions.to_string_lossy().into_owned();
    openssl(
        dir,
        &["x509", "-req", "-in", &request, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial", "-days", "2"]
            .into_iter()
            .chain(["-extfile", &extensions, "-out", &node])
            .collect::<Vec<_>>(),
    )?;
    Ok(Certificates { ca: dir.join(ca), node: dir.join(node), node_key: dir.join(key) })
}

fn connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    pkd::tls::install_default_provider();
    Ok(TlsConnector::from(Arc::new(pkd::tls::client_config(ca)?)))
}

async fn tls_to(
    address: std::net::SocketAddr,
    ca: &Path,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(address).await?;
    let name = ServerName::IpAddress(address.ip().into());
    Ok(connector(ca)?.connect(name, stream).await?)
}

async fn https(
    address: std::net::SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, body) =
        crate::common::http_over(tls_to(address, ca).await?, method, path, Some(bearer), &body).await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

type Secure = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `wss://` client of `address` as `dev:<user>`.
async fn wss(address: std::net::SocketAddr, ca: &Path, user: u64) -> anyhow::Result<Secure> {
    let stream = tls_to(address, ca).await?;
    let mut request = format!("wss://{address}/ws").into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer dev:{user}").parse()?);
    Ok(tokio_tungstenite::client_async(request, stream).await?.0)
}

/// Sends command `command_id` and returns its reply, keeping the pushes met meanwhile.
async fn command(
    socket: &mut Secure,
    pushes: &mut Vec<Value>,
    command_id: i64,
    room: u64,
    fields: Value,
) -> anyhow::Result<Value> {
    let mut frame = json!({"commandId": command_id, "msgType": "command", "roomId": room, "sequence": 1,
                           "logId": format!("tls-{room}-{command_id}")});
    for (key, value) in fields.as_object().context("fields")? {
        frame[key] = value.clone();
    }
    socket.send(Message::Text(frame.to_string().into())).await?;
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await?.context("closed")??;
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text)?;
            if value["msgType"] == "command" {
                return Ok(value);
            }
            pushes.push(value);
        }
    }
}

/// Waits for a push 10 of `pk` that `check` accepts.
async fn state(socket: &mut Secure, pushes: &mut [Value], check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    if let Some(found) = pushes.iter().find(|push| push["type"] == 10 && check(&push["content"])) {
        return Ok(found.clone());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next()).await?.context("closed")??;
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text)?;
            if value["type"] == 10 && check(&value["content"]) {
                return Ok(value);
            }
        }
    }
}

/// Runs `pkd args`, trusting `ca` through its flag (`flag.0`) if given, with the flag's
/// environment variable (`flag.1`) cleared either way.
fn pkd_trusting(args: &[&str], flag: (&str, &str), ca: Option<&Path>) -> std::io::Result<std::process::Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pkd"));
    command.args(args);
    if let Some(ca) = ca {
        command.arg(flag.0).arg(ca);
    }
    command.env_remove(flag.1).output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_tls_on_every_link_run_a_pk() -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let certificates = make_certificates(dir.path(), "pkd")?;
    let stranger = make_certificates(dir.path(), "stranger")?;
    let mut options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    let path = |path: &PathBuf| path.to_string_lossy().into_owned();
    options.extra_args.extend([
        "--tls-cert".to_owned(),
        path(&certificates.node),
        "--tls-key".to_owned(),
        path(&certificates.node_key),
        "--cluster-tls-cert".to_owned(),
        path(&certificates.node),
        "--cluster-tls-key".to_owned(),
        path(&certificates.node_key),
        "--cluster-tls-ca".to_owned(),
        path(&certificates.ca),
    ]);
    let cluster = tokio::task::block_in_place(|| LocalCluster::start(options))?;
    let ca = &certificates.ca;
    let token = cluster.options().admin_token.clone();

    // The groups form over TLS links: every node sees every group led.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut led = true;
        for id in cluster.ids() {
            let (status, body) = https(cluster.node(id)?.admin_addr, ca, "GET", "/admin/status", &token, None).await?;
            ensure!(status == 200, "admin status over HTTPS: {status} {body}");
            led &= body["groups"].as_array().is_some_and(|groups| {
                groups.len() == 3 && groups.iter().all(|group| group["leader"].as_u64().is_some())
            });
        }
        if led {
            break;
        }
        ensure!(Instant::now() < deadline, "the groups found no leaders over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in cluster.ids() {
        let (status, _) = https(
            cluster.node(id)?.admin_addr,
            ca,
            "POST",
            "/admin/config",
            &token,
            Some(&json!({"key": "pk_duration", "value": "300,8000,0,600000"})),
        )
        .await?;
        if status == 200 {
            break;
        }
    }

    // Anchors on nodes 1 and 2, a viewer on node 3, all over wss://.
    let (a, b, viewer) = (61_001u64, 61_002u64, 61_101u64);
    let (mut pushes_a, mut pushes_b, mut pushes_v) = (Vec::new(), Vec::new(), Vec::new());
    let mut source = wss(cluster.node(1)?.client_addr, ca, a).await?;
    let mut target = wss(cluster.node(2)?.client_addr, ca, b).await?;
    let mut watcher = wss(cluster.node(3)?.client_addr, ca, viewer).await?;
    command(&mut source, &mut pushes_a, 40, a, json!({"type": 2})).await?;
    command(&mut target, &mut pushes_b, 40, b, json!({"type": 2})).await?;
    let queued = command(&mut source, &mut pushes_a, 28, a, json!({"type": 1, "source": a, "target": 0})).await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let matched = command(&mut target, &mut pushes_b, 28, b, json!({"type": 1, "source": b, "target": 0})).await?;
    ensure!(matched["code"] == "902004", "{matched}");
    let first = state(&mut target, &mut pushes_b, |content| content["sourceUser"] == a).await?;
    let pk = first["content"]["pkId"].as_u64().context("pkId")?;
    let entered = command(&mut watcher, &mut pushes_v, 40, a, json!({"type": 1})).await?;
    ensure!(entered["result"]["pkId"] == pk, "{entered}");

    // A gift through node 3's HTTPS gift API reaches the viewer's pushes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gift = json!({"id": 610_001, "receiver": a, "sender": 9, "beans": 42});
    let gift_token = cluster.options().gift_token.clone();
    let (status, reply) =
        https(cluster.node(3)?.client_addr, ca, "POST", "/internal/gifts", &gift_token, Some(&gift)).await?;
    ensure!(status == 200 && reply["code"] == "000000", "{status} {reply}");
    state(&mut watcher, &mut pushes_v, |content| content["pkId"] == pk && content["sourceGifts"] == 42).await?;

    // Refused: a plain WebSocket on the TLS port, a client that trusts another CA, and a
    // peer that opens the node-to-node port without TLS.
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=dev:1", cluster.node(1)?.client_addr)).await;
    ensure!(plain.is_err(), "a plain WebSocket was accepted on a TLS listener");
    ensure!(tls_to(cluster.node(1)?.client_addr, &stranger.ca).await.is_err(), "a certificate from another CA passed");
    ensure!(tls_to(cluster.node(1)?.cluster_addr, &stranger.ca).await.is_err(), "the cluster port's certificate");
    let mut raw = TcpStream::connect(cluster.node(1)?.cluster_addr).await?;
    raw.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await?;
    let mut answer = [0u8; 64];
    match tokio::time::timeout(WAIT, raw.read(&mut answer)).await? {
        Ok(0) | Err(_) => {}
        Ok(read) => {
            // Whatever came back must not be a handshake answer in the clear: a TLS alert.
            ensure!(answer[0] == 0x15, "{read} plain bytes answered: {:?}", &answer[..read]);
        }
    }
    // The cluster still serves.
    let (status, _) = https(cluster.node(2)?.admin_addr, ca, "GET", "/admin/status", &token, None).await?;
    ensure!(status == 200);

    // `pkd cluster` reaches a TLS admin API with --ca, and only with it.
    let admin = cluster.node(1)?.admin_addr.to_string();
    let status = |ca: Option<&Path>| {
        pkd_trusting(
            &["cluster", "status", "--json", "--admin", &admin, "--token", &token],
            ("--ca", "PKD_ADMIN_CA"),
            ca,
        )
    };
    let output = tokio::task::block_in_place(|| status(Some(ca)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let whole: Value = serde_json::from_str(&stdout)?;
    ensure!(whole.to_string().contains("\"groups\""), "{whole}");
    let plain = tokio::task::block_in_place(|| status(None))?;
    ensure!(!plain.status.success(), "plain HTTP reached a TLS admin API");
    let foreign = tokio::task::block_in_place(|| status(Some(&stranger.ca)))?;
    ensure!(!foreign.status.success(), "a foreign CA was trusted");

    // `pkd bench` drives the cluster over wss:// and HTTPS with --tls-ca: anchors, a PK,
    // gifts through every node, the admin API for its settings; and not without it.
    let join = |addresses: Vec<std::net::SocketAddr>| {
        addresses.iter().map(std::net::SocketAddr::to_string).collect::<Vec<_>>().join(",")
    };
    let clients =
        join(cluster.ids().iter().map(|&id| cluster.node(id).map(|node| node.client_addr)).collect::<Result<_, _>>()?);
    let admins =
        join(cluster.ids().iter().map(|&id| cluster.node(id).map(|node| node.admin_addr)).collect::<Result<_, _>>()?);
    let bench = |ca: Option<&Path>| {
        let args = ["bench", "gifts", "--nodes", &clients, "--admin", &admins, "--admin-token", &token];
        let more = ["--gift-token", &gift_token, "--dev-auth", "--clients", "4", "--seconds", "2", "--warmup", "0.5"];
        pkd_trusting(&[&args[..], &more, &["--json", "--quiet"]].concat(), ("--tls-ca", "PKD_BENCH_TLS_CA"), ca)
    };
    let output = tokio::task::block_in_place(|| bench(Some(ca)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(&stdout)?;
    let ok = summary["ok"].as_f64().context("ok")?;
    ensure!(
        ok > 0.0 && summary["requests"].as_f64() == Some(ok + summary["errors"].as_f64().unwrap_or(0.0)),
        "{summary:#}"
    );
    ensure!(summary["details"]["gifts_missing"] == 0, "every acknowledged gift is in the scores: {summary:#}");
    let plain = tokio::task::block_in_place(|| bench(None))?;
    ensure!(!plain.status.success(), "the bench reached TLS listeners in the clear");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_store_speaks_tls_to_mariadb() -> anyhow::Result<()> {
    let (Ok(server), Ok(ca)) = (std::env::var("PKD_TEST_MYSQL_URL"), std::env::var("PKD_TEST_MYSQL_CA")) else {
        bail!("set PKD_TEST_MYSQL_URL and PKD_TEST_MYSQL_CA (scripts/test starts a MariaDB with TLS and sets both)");
    };
    let database = format!("pkd_tls_{}", std::process::id());
    let admin = sqlx::MySqlPool::connect(&server).await?;
    sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute(&admin).await?;
    let url = format!("{server}/{database}?ssl-mode=VERIFY_CA&ssl-ca={ca}");
    let store = pkd::sinks::ResultsStore::connect(&url).await?;
    drop(store);
    // The session is encrypted: MariaDB names the cipher.
    let pool = sqlx::MySqlPool::connect(&url).await?;
    let row: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'").fetch_one(&pool).await?;
    ensure!(!row.1.is_empty(), "no TLS cipher on the session: {row:?}");
    // A CA that did not sign the server's certificate is refused.
    let dir = tempfile::TempDir::new()?;
    let stranger = make_certificates(dir.path(), "stranger")?;
    let wrong = format!("{server}/{database}?ssl-mode=VERIFY_CA&ssl-ca={}", stranger.ca.display());
    ensure!(sqlx::MySqlPool::connect(&wrong).await.is_err(), "a server certificate from another CA passed");
    sqlx::query(&format!("DROP DATABASE {database}")).execute(&admin).await?;
    println!("results store over TLS: cipher {}", row.1);
    Ok(())
}
