//! The `pkd` binary's offline commands, run as a real process.

use std::process::Command;

fn pkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pkd")).args(args).env_remove("PKD_LOGIN_SECRET").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_reads_the_source_formats_and_explains_refusals() {
    let (ok, out, _) = pkd(&[
        "config",
        "check",
        "pk_config",
        "{'name':'匹配赛','interveningTime':120000,'endTime':600000,'inviteNum':10,'inviteColdDown':1800000}",
    ]);
    assert!(ok);
    assert!(out.contains("intervening_ms: 120000"), "{out}");
    let (ok, _, err) = pkd(&["config", "check", "pk_duration", "1500,300000"]);
    assert!(!ok);
    assert!(err.contains("expected 3 or 4"), "{err}");
    let (ok, _, err) = pkd(&["config", "check", "pk_colour", "red"]);
    assert!(!ok);
    assert!(err.contains("the keys are pk_enable"), "{err}");
}

#[test]
fn login_tokens_minted_by_the_cli_verify_and_tampering_is_caught() {
    let (ok, token, _) = pkd(&[
        "token",
        "login",
        "--secret",
        "s3cret",
        "--user",
        "2099955",
        "--country",
        "IN",
        "--platform",
        "android",
        "--client-version",
        "207",
    ]);
    assert!(ok);
    let token = token.trim();
    let (ok, out, _) = pkd(&["token", "verify-login", "--secret", "s3cret", token]);
    assert!(ok, "{out}");
    assert!(out.contains("2099955") && out.contains("Android"), "{out}");
    let (ok, _, err) = pkd(&["token", "verify-login", "--secret", "other", token]);
    assert!(!ok);
    assert!(err.contains("token refused"), "{err}");
}

#[test]
fn rtm_tokens_are_access_token_2() {
    let (ok, token, err) = pkd(&[
        "token",
        "rtm",
        "--app-id",
        "0123456789abcdef0123456789abcdef",
        "--app-certificate",
        "fedcba9876543210fedcba9876543210",
        "--user",
        "2100216",
    ]);
    assert!(ok, "{err}");
    let token = token.trim();
    assert!(token.starts_with("007"));
    let claims = pkd::tokens::rtm::verify(token, "fedcba9876543210fedcba9876543210").unwrap();
    assert_eq!(claims.rtm().unwrap().0, "2100216");
    assert_eq!(claims.expire_seconds, 600);
}

#[test]
fn serve_refuses_incomplete_or_weak_cluster_and_admin_settings() {
    let base = ["serve", "--dev-auth", "--data-dir", "/nonexistent/pkd-cli-test", "--listen", "127.0.0.1:0"];
    let cases: [(&[&str], &str); 5] = [
        (&["--cluster-listen", "127.0.0.1:0"], "set all of --cluster-listen, --peers and --cluster-secret"),
        (
            &["--cluster-listen", "127.0.0.1:0", "--peers", "1=127.0.0.1:7700", "--cluster-secret", "short"],
            "at least 16 bytes",
        ),
        (
            &["--cluster-listen", "127.0.0.1:0", "--peers", "2=127.0.0.1:7700", "--cluster-secret", "0123456789abcdef"],
            "must include this node",
        ),
        (&["--admin-listen", "127.0.0.1:0"], "--admin-listen needs --admin-token"),
        (&["--join"], "--join needs the cluster settings"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (ok, _, err) = pkd(&args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let (ok, _, err) = pkd(&["cluster", "status", "--admin", "127.0.0.1:1", "--token", "x"]);
    assert!(!ok);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["cluster", "status"])
        .env_remove("PKD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("set --token"));
}

/// One HTTP/1.1 GET with an optional bearer token; returns the whole response.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: pkd\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_exposes_its_metrics_on_the_admin_listener_only() {
    use std::io::{BufRead, BufReader};
    const TOKEN: &str = "metrics-admin-token-0123456789";
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["serve", "--dev-auth", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-token", TOKEN, "--gift-token", "metrics-gift-token-0123456789", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut client, mut admin) = (None, None);
    while client.is_none() || admin.is_none() {
        let line = lines.next().expect("pkd exited").unwrap();
        if let Some(addr) = line.strip_prefix("pkd listening on ") {
            client = Some(addr.to_owned());
        } else if let Some(addr) = line.strip_prefix("pkd admin listening on ") {
            admin = Some(addr.to_owned());
        }
    }
    let (client, admin) = (client.unwrap(), admin.unwrap());
    // One gift for a receiver in no PK: refused, counted and timed.
    {
        use std::io::{Read, Write};
        let body = r#"{"id":1,"receiver":5,"sender":6,"beans":10}"#;
        let mut stream = std::net::TcpStream::connect(&client).unwrap();
        let request = format!(
            "POST /internal/gifts HTTP/1.1\r\nHost: pkd\r\nAuthorization: Bearer metrics-gift-token-0123456789\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("905040"), "{answer}");
    }
    let public = http_get(&client, "/metrics", None);
    let anonymous = http_get(&admin, "/metrics", None);
    let wrong = http_get(&admin, "/metrics", Some("not-the-admin-token-at-all"));
    let scraped = http_get(&admin, "/metrics", Some(TOKEN));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(public.starts_with("HTTP/1.1 404"), "the client listener serves no metrics: {public}");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    for series in [
        "# TYPE pkd_results_repaired_total counter",
        "pkd_cache_errors_total 0",
        "# TYPE pkd_raft_term gauge",
        "pkd_raft_is_leader{group=\"0\"} 1",
        "# TYPE pkd_process_resident_memory_bytes gauge",
        "# TYPE pkd_connections gauge",
        "pkd_gifts_total{outcome=\"refused\",code=\"905040\"} 1",
        "pkd_gift_request_duration_seconds_count 1",
    ] {
        assert!(scraped.contains(series), "{series} missing from {scraped}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_pk_with_gifts_on_its_watch_page() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The demo says where to watch.
    let watch = tokio::task::block_in_place(|| {
        loop {
            let line = lines.next().expect("pkd exited").unwrap();
            if let Some(url) = line.strip_prefix("pkd demo: watch one live at ") {
                break url.to_owned();
            }
        }
    });
    let rest = watch.strip_prefix("http://").unwrap();
    let (address, query) = rest.split_once("/watch?").unwrap();
    assert_eq!(query, "room=1001&token=dev:9001");
    let page = http_get(address, "/watch", None);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<html"), "{page}");

    // What the page shows, as the page gets it: room 1001's PK, and gifts in its score.
    let mut viewer = pkd_cluster::AppClient::connect(address, 9001, pkd_cluster::Auth::dev(9001)).await.unwrap();
    viewer.enter(1001, false).await.unwrap();
    let battle = viewer
        .wait_for(std::time::Duration::from_secs(30), |push| {
            push["type"] == 10
                && push["content"]["status"] == 1
                && push["content"]["sourceGifts"].as_i64().unwrap_or(0)
                    + push["content"]["targetGifts"].as_i64().unwrap_or(0)
                    > 0
        })
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let battle = battle.expect("a battle with gifts within 30 s");
    assert!(battle.message["content"]["pkId"].as_u64().is_some(), "{:?}", battle.message);
}

#[test]
fn a_settings_file_from_config_init_runs_a_node_and_flags_win_over_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::TempDir::new().unwrap();
    // The starting file, edited as an operator would.
    let (ok, template, err) = pkd(&["config", "init"]);
    assert!(ok, "{err}");
    let data = dir.path().join("data");
    let settings = template
        .replace("listen = \"127.0.0.1:7600\"", "listen = \"127.0.0.1:1\"")
        .replace("# dev-auth = true", "dev-auth = true")
        .replace("data-dir = \"pkd-data\"", &format!("data-dir = {:?}", data.to_string_lossy()));
    let file = dir.path().join("pkd.toml");
    std::fs::write(&file, &settings).unwrap();
    let file = file.to_string_lossy().into_owned();
    let (ok, out, err) = pkd(&["config", "check", "--file", &file]);
    assert!(ok, "{out}{err}");

    // A flag wins over the file: the file's port 1 is never tried.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["serve", "--config", &file, "--listen", "127.0.0.1:0", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("pkd exited").unwrap();
        if let Some(address) = line.strip_prefix("pkd listening on ") {
            break address.to_owned();
        }
    };
    let live = http_get(&address, "/livez", None);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let used = std::fs::read_dir(&data).is_ok_and(|mut entries| entries.next().is_some());
    assert!(used, "the data-dir of the file is used");

    // A file with a setting pkd does not know is refused with its name, before anything starts.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\ncolour = 3\n").unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let (ok, _, err) = pkd(&["config", "check", "--file", &bad]);
    assert!(!ok && err.contains("unknown setting \"colour\""), "{err}");
    let (ok, _, err) = pkd(&["serve", "--config", &bad, "--dev-auth"]);
    assert!(!ok && err.contains("colour"), "{err}");
}

#[test]
fn a_port_in_use_is_refused_before_any_state_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_string_lossy().into_owned();
    let (ok, _, err) = pkd(&["serve", "--dev-auth", "--listen", &address, "--data-dir", &data_dir, "--log", "warn"]);
    assert!(!ok, "a node started on a port in use");
    assert!(err.contains(&address), "the refusal names the port: {err}");
    assert!(!data.exists(), "the data directory was created before the port was checked");
}
