//! A headless Chromium driven over the DevTools protocol: just what these tests need
//! (open a page, evaluate JavaScript, wait for a condition, take a screenshot), over the
//! WebSocket client the tests already use.
//!
//! The browser is `$PKD_CHROMIUM`, or `chromium` on the `PATH` (Debian's package
//! `chromium`). It runs with a fresh profile in a temporary directory, and is killed when
//! the [`Browser`] is dropped. JavaScript errors and failed console assertions on a page
//! are collected; [`Page::check_no_errors`] fails a test that caused any.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Replies = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One Chromium process.
pub struct Browser {
    child: Child,
    outgoing: mpsc::UnboundedSender<String>,
    replies: Replies,
    next_id: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

/// The browser's executable: `$PKD_CHROMIUM`, else `chromium`.
pub fn chromium() -> String {
    std::env::var("PKD_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

impl Browser {
    /// Starts a headless Chromium and connects to its DevTools endpoint.
    pub async fn launch() -> anyhow::Result<Browser> {
        let profile = tempfile::TempDir::new()?;
        let binary = chromium();
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("starting {binary} (install Debian's package `chromium`, or set PKD_CHROMIUM to a Chromium)")
            })?;
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let (found, endpoint) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        let url = tokio::task::block_in_place(|| endpoint.recv_timeout(Duration::from_secs(30)))
            .context("chromium did not print its DevTools endpoint")?;
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.context("DevTools connection")?;
        let (mut write, mut read) = socket.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = to_send.recv().await {
                if write.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let replies: Replies = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (waiting, seen) = (replies.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = read.next().await {
                let Ok(text) = message.to_text() else { continue };
                let Ok(value) = serde_json::from_str::<Value>(text) else { continue };
                if let Some(id) = value["id"].as_u64() {
                    if let Some(reply) = waiting.lock().unwrap().remove(&id) {
                        let _ = reply.send(value);
                    }
                } else if value["method"] == "Runtime.exceptionThrown" {
                    let details = &value["params"]["exceptionDetails"];
                    let text = details["exception"]["description"].as_str().or(details["text"].as_str());
                    seen.lock().unwrap().push(format!("uncaught: {}", text.unwrap_or("?")));
                } else if value["method"] == "Runtime.consoleAPICalled" && value["params"]["type"] == "error" {
                    seen.lock().unwrap().push(format!("console.error: {}", value["params"]["args"]));
                }
            }
        });
        Ok(Browser { child, outgoing, replies, next_id: Arc::new(AtomicU64::new(1)), errors, _profile: profile })
    }

    /// Sends one DevTools command (to a page's session, or to the browser) and waits for
    /// its result.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (reply, answer) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, reply);
        self.outgoing.send(message.to_string()).context("the DevTools connection is closed")?;
        let answer = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .with_context(|| format!("{method}: no answer"))?
            .with_context(|| format!("{method}: connection lost"))?;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// A new tab of `width` × `height` CSS pixels.
    pub async fn page(&self, width: u32, height: u32) -> anyhow::Result<Page<'_>> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"})).await?;
        let target = target["targetId"].as_str().context("targetId")?.to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await?;
        let session = attached["sessionId"].as_str().context("sessionId")?.to_owned();
        let page = Page { browser: self, session };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let navigated = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            bail!("opening {url}: {error}");
        }
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(20), "the page to load").await?;
        Ok(())
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "awaitPromise": true, "returnByValue": true}))
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {}", exception["exception"]["description"].as_str().unwrap_or("exception"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` every 100 ms until it gives something other than `null`,
    /// `undefined`, `false`, `0` or `""`, and returns that; fails after `limit`, naming
    /// `what` and the last value.
    pub async fn wait_for(&self, expression: &str, limit: Duration, what: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.eval(expression).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => last = value,
                Err(error) => last = json!(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("waited {limit:?} for {what}: `{expression}` was last {last}")
    }

    /// Clicks the first element `selector` matches.
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
                json!(selector)
            ))
            .await?;
        if found != json!(true) {
            bail!("nothing matches {selector}");
        }
        Ok(())
    }

    /// Sets the value of the input, select or text area `selector` matches, as typing
    /// would (an `input` and a `change` event).
    pub async fn set_value(&self, selector: &str, value: &str) -> anyhow::Result<()> {
        let done = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; \
                 e.dispatchEvent(new Event('input', {{bubbles: true}})); \
                 e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value === {}; }})()",
                json!(selector),
                json!(value),
                json!(value)
            ))
            .await?;
        if done != json!(true) {
            bail!("could not set {selector} to {value}");
        }
        Ok(())
    }

    /// Saves a PNG of the whole page as it shows now (beyond the window if it is longer)
    /// under `target/screenshots/<name>.png`, and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (size["width"].as_f64().unwrap_or(1280.0), size["height"].as_f64().unwrap_or(860.0));
        let clip = json!({"x": 0, "y": 0, "width": width, "height": height, "scale": 1});
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true, "clip": clip}))
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().context("data")?)?;
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// Fails if any page of the browser threw an uncaught exception or logged an error.
    pub fn check_no_errors(&self) -> anyhow::Result<()> {
        let errors = self.browser.errors.lock().unwrap().clone();
        if !errors.is_empty() {
            bail!("the page reported errors: {errors:#?}");
        }
        Ok(())
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// `target/screenshots/`.
pub fn screenshots_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(|target| target.join("screenshots")).unwrap_or(tmp)
}
