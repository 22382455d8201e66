//! `docs/openapi.yaml` against itself, against the routes pkd declares, and against what
//! a running node answers.
//!
//! - The document reads as OpenAPI 3.0 (the `openapiv3` types), every `$ref` resolves,
//!   every path parameter is declared, operation ids are unique, and every example is
//!   valid against its schema (JSON Schema, through `jsonschema`).
//! - Every route `src/http/mod.rs` declares is documented, and every documented route is
//!   declared.
//! - A real node answers each route, with and without its credential, with a documented
//!   status, a documented content type and, for JSON, a body valid against the schema.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use pkd_cluster::{LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");
const ROUTES: &str = include_str!("../../src/http/mod.rs");
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

fn document() -> anyhow::Result<Value> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(DOCUMENT).context("docs/openapi.yaml is not YAML")?;
    Ok(serde_json::to_value(yaml)?)
}

/// The value a local `$ref` points at.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    root.pointer(reference.strip_prefix('#')?)
}

/// Follows `$ref`s until a value without one.
fn deref<'a>(root: &'a Value, mut value: &'a Value) -> anyhow::Result<&'a Value> {
    for _ in 0..16 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => value = resolve(root, reference).with_context(|| format!("unresolved {reference}"))?,
            None => return Ok(value),
        }
    }
    bail!("a $ref cycle")
}

/// An OpenAPI 3.0 schema as JSON Schema: `nullable` becomes a `null` alternative;
/// OpenAPI's `example` is dropped.
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "nullable" | "example" => {}
                    "properties" | "additionalProperties" | "items" | "allOf" | "oneOf" | "anyOf" | "not" => {
                        out.insert(key.clone(), json_schema(value));
                    }
                    _ if matches!(value, Value::Object(_) | Value::Array(_)) && key != "enum" && key != "required" => {
                        out.insert(key.clone(), json_schema(value));
                    }
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            let out = Value::Object(out);
            if map.get("nullable") == Some(&Value::Bool(true)) {
                json!({ "anyOf": [{ "type": "null" }, out] })
            } else {
                out
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

/// Checks `instance` against `schema` (a schema of the document, `$ref`s into it allowed).
fn validate(root: &Value, schema: &Value, instance: &Value) -> anyhow::Result<()> {
    let mut wrapped = json_schema(schema);
    if let Value::Object(map) = &mut wrapped {
        map.insert("components".into(), json_schema(&root["components"]));
    }
    let validator = jsonschema::validator_for(&wrapped).map_err(|error| anyhow::anyhow!("schema: {error}"))?;
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|error| format!("{error} at {}", error.instance_path())).collect();
    ensure!(errors.is_empty(), "{instance} is not valid: {}", errors.join("; "));
    Ok(())
}

/// Every (method, path) of the document.
fn documented(root: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in root["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

/// Every (method, path) `src/http/mod.rs` routes: `.route("PATH", METHOD(...)...)`.
fn declared() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for part in ROUTES.split(".route(\"").skip(1) {
        let Some((path, rest)) = part.split_once('"') else { continue };
        let call = rest.split(".route(").next().unwrap_or(rest);
        for method in METHODS {
            if call.contains(&format!(" {method}("))
                || call.contains(&format!(".{method}("))
                || call.contains(&format!("({method}("))
            {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

#[test]
fn the_document_reads_as_openapi_and_its_examples_fit_its_schemas() -> anyhow::Result<()> {
    let parsed: openapiv3::OpenAPI = serde_yaml_ng::from_str(DOCUMENT).context("not an OpenAPI 3.0 document")?;
    ensure!(parsed.openapi.starts_with("3.0."), "{}", parsed.openapi);
    let root = document()?;
    // Every $ref resolves.
    let mut stack = vec![&root];
    let mut references = 0;
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    ensure!(resolve(&root, reference).is_some(), "unresolved $ref {reference}");
                    references += 1;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    ensure!(references > 20, "only {references} $refs: is the walk broken?");
    // Operations: unique ids, path parameters declared, responses described.
    let mut ids = BTreeSet::new();
    let mut examples = 0;
    for (path, item) in root["paths"].as_object().context("paths")? {
        let templated: BTreeSet<&str> =
            path.split('{').skip(1).filter_map(|part| part.split_once('}').map(|(name, _)| name)).collect();
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let id = operation["operationId"].as_str().with_context(|| format!("{method} {path}: no operationId"))?;
            ensure!(ids.insert(id.to_owned()), "operationId {id} twice");
            let mut in_path = BTreeSet::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let parameter = deref(&root, parameter)?;
                if parameter["in"] == "path" {
                    ensure!(parameter["required"] == true, "{method} {path}: path parameters are required");
                    in_path.insert(parameter["name"].as_str().unwrap_or_default());
                }
            }
            ensure!(in_path == templated, "{method} {path}: declares {in_path:?}, the path has {templated:?}");
            let responses =
                operation["responses"].as_object().with_context(|| format!("{method} {path}: responses"))?;
            ensure!(!responses.is_empty(), "{method} {path}: no responses");
            let mut media = Vec::new();
            for (status, response) in responses {
                let response = deref(&root, response)?;
                ensure!(response["description"].is_string(), "{method} {path} {status}: no description");
                for (kind, content) in response["content"].as_object().into_iter().flatten() {
                    media.push((format!("{method} {path} {status} {kind}"), content));
                }
            }
            let body = operation.get("requestBody").map(|body| deref(&root, body)).transpose()?;
            for (kind, content) in body.and_then(|body| body["content"].as_object()).into_iter().flatten() {
                media.push((format!("{method} {path} request {kind}"), content));
            }
            for (what, content) in media {
                let schema = &content["schema"];
                let mut samples: Vec<&Value> = content.get("example").into_iter().collect();
                samples.extend(content["examples"].as_object().into_iter().flatten().map(|(_, e)| &e["value"]));
                for sample in samples {
                    validate(&root, schema, sample).with_context(|| what.clone())?;
                    examples += 1;
                }
            }
        }
    }
    ensure!(examples >= 8, "only {examples} examples checked");
    // Schema-level examples too.
    for (name, schema) in root["components"]["schemas"].as_object().context("schemas")? {
        for (property, inner) in schema["properties"].as_object().into_iter().flatten() {
            if let Some(sample) = inner.get("example") {
                validate(&root, inner, sample).with_context(|| format!("{name}.{property}"))?;
            }
        }
    }
    // And a wrong instance is refused: the checker can fail.
    let room = json!({ "$ref": "#/components/schemas/RoomInPk" });
    ensure!(validate(&root, &room, &json!({ "roomId": "seven", "pkId": 1, "anchor": 2 })).is_err());
    ensure!(validate(&root, &room, &json!({ "roomId": 7, "pkId": 1, "anchor": 2, "extra": 1 })).is_err());
    Ok(())
}

#[test]
fn every_declared_route_is_documented_and_every_documented_route_declared() -> anyhow::Result<()> {
    let root = document()?;
    let documented = documented(&root);
    let declared = declared();
    ensure!(declared.len() >= 15, "only {} routes found in src/http/mod.rs: is the reader broken?", declared.len());
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let undeclared: Vec<_> = documented.difference(&declared).collect();
    ensure!(undocumented.is_empty(), "routes missing from docs/openapi.yaml: {undocumented:?}");
    ensure!(undeclared.is_empty(), "documented but not served: {undeclared:?}");
    Ok(())
}

/// One HTTP/1.1 exchange: status, content type, body.
async fn exchange(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(address).await?;
    let mut head = format!("{} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n", method.to_uppercase());
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if let Some(body) = body {
        stream.write_all(body).await?;
    }
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await??;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").context("no header end")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1).context("status")?.parse()?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let mut body = response[end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n").context("chunk")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line])?.trim(), 16)?;
            rest = &rest[line + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok((status, content_type, body))
}

/// Calls a documented route and checks the answer against the document; returns the
/// status and the body.
struct Contract {
    root: Value,
    /// (method, path template) seen, and the statuses seen for each.
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl Contract {
    async fn call(
        &mut self,
        address: &str,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let (status, content_type, bytes) = exchange(address, method, path, token, body).await?;
        let what = format!("{method} {path} answered {status} ({content_type}): {}", String::from_utf8_lossy(&bytes));
        let operation = self.root["paths"][template][method].clone();
        ensure!(operation.is_object(), "{method} {template} is not documented");
        let response = operation["responses"].get(status.to_string()).or(operation["responses"].get("default"));
        let response = deref(&self.root, response.with_context(|| format!("undocumented status: {what}"))?)?.clone();
        let kind = content_type.split(';').next().unwrap_or_default().trim().to_owned();
        match response.get("content").and_then(Value::as_object) {
            None => ensure!(bytes.is_empty() || status == 101, "a body where none is documented: {what}"),
            Some(content) => {
                let media = content.get(&kind).with_context(|| format!("undocumented content type: {what}"))?;
                if kind == "application/json" {
                    let value: Value = serde_json::from_slice(&bytes).with_context(|| what.clone())?;
                    validate(&self.root, &media["schema"], &value).with_context(|| what.clone())?;
                }
            }
        }
        self.seen.entry((method.to_owned(), template.to_owned())).or_default().insert(status);
        Ok((status, bytes))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_answers_as_documented() -> anyhow::Result<()> {
    let mut options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    options.nodes = 1;
    options.arenas = 2;
    let cluster = LocalCluster::start(options.clone())?;
    let client = cluster.node(1)?.client_addr.to_string();
    let admin = cluster.node(1)?.admin_addr.to_string();
    let (gift, admin_token) = (options.gift_token.as_str(), options.admin_token.as_str());
    let login = Some("dev:4242");
    let mut contract = Contract { root: document()?, seen: BTreeMap::new() };
    let c = &mut contract;

    // The document is served, on both listeners, as the file.
    for address in [&client, &admin] {
        let (status, body) = c.call(address, "get", "/openapi.yaml", "/openapi.yaml", None, None).await?;
        ensure!(status == 200 && body == DOCUMENT.as_bytes(), "{address}: {status}");
    }
    // Health.
    let (status, _) = c.call(&client, "get", "/livez", "/livez", None, None).await?;
    ensure!(status == 200);
    c.call(&client, "get", "/healthz", "/healthz", None, None).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.call(&client, "get", "/readyz", "/readyz", None, None).await?.0 != 200 {
        ensure!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The WebSocket: refused without a login token or with a bad one.
    for token in [None, Some("not-a-token")] {
        let (status, _) = c.call(&client, "get", "/ws", "/ws", token, None).await?;
        ensure!(status == 401, "{status}");
    }
    let (status, _) = c.call(&client, "get", "/ws", "/ws?token=dev:4242", None, None).await?;
    ensure!(status == 400, "a plain GET with a good token is not an upgrade: {status}");
    // The gift API.
    let one = json!({ "id": 1, "receiver": 77, "sender": 78, "beans": 10 }).to_string();
    let (status, _) = c.call(&client, "post", "/internal/gifts", "/internal/gifts", None, Some(one.as_bytes())).await?;
    ensure!(status == 401);
    let (status, body) =
        c.call(&client, "post", "/internal/gifts", "/internal/gifts", Some(gift), Some(one.as_bytes())).await?;
    let reply: Value = serde_json::from_slice(&body)?;
    ensure!(status == 200 && reply["code"] == "905040", "{reply}");
    let batch = json!({ "gifts": [{ "id": 2, "receiver": 77, "sender": 78, "beans": 10 },
                                  { "id": 3, "pkId": 9, "receiver": 77, "sender": 78, "beans": 10 }] })
    .to_string();
    let (status, body) =
        c.call(&client, "post", "/internal/gifts", "/internal/gifts", Some(gift), Some(batch.as_bytes())).await?;
    let reply: Value = serde_json::from_slice(&body)?;
    ensure!(status == 200 && reply["result"].as_array().map(Vec::len) == Some(2), "{reply}");
    for bad in ["{", r#"{"id": -1, "receiver": 1, "sender": 2, "beans": 1}"#, r#"{"id": 1, "color": "red"}"#] {
        let (status, _) =
            c.call(&client, "post", "/internal/gifts", "/internal/gifts", Some(gift), Some(bad.as_bytes())).await?;
        ensure!(status == 400, "{bad}: {status}");
    }
    let huge = vec![b' '; 2 * 1024 * 1024];
    let (status, _) = c.call(&client, "post", "/internal/gifts", "/internal/gifts", Some(gift), Some(&huge)).await?;
    ensure!(status == 413, "{status}");
    // The read API.
    let history = "/api/anchors/{id}/pks";
    let (status, _) = c.call(&client, "get", history, "/api/anchors/77/pks", None, None).await?;
    ensure!(status == 401);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.call(&client, "get", history, "/api/anchors/77/pks?page=1&size=5", login, None).await?.0 != 200 {
        ensure!(Instant::now() < deadline, "the results store never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = c.call(&client, "get", history, "/api/anchors/seven/pks", login, None).await?;
    ensure!(status == 400);
    let (status, _) = c.call(&client, "get", history, "/api/anchors/7/pks?size=lots", login, None).await?;
    ensure!(status == 400);
    let (status, _) = c.call(&client, "get", history, "/api/anchors/7/pks?token=dev:5", None, None).await?;
    ensure!(status == 200);
    let ledger = "/api/pks/{id}/gifts";
    let (status, _) = c.call(&client, "get", ledger, "/api/pks/7/gifts", None, None).await?;
    ensure!(status == 401);
    let (status, body) = c.call(&client, "get", ledger, "/api/pks/7/gifts?after=0&limit=5000", login, None).await?;
    let page: Value = serde_json::from_slice(&body)?;
    ensure!(status == 200 && page["limit"] == 1000 && page["gifts"] == json!([]) && page["next"].is_null(), "{page}");
    for bad in ["/api/pks/seven/gifts", "/api/pks/7/gifts?after=-1", "/api/pks/18446744073709551615/gifts"] {
        let (status, _) = c.call(&client, "get", ledger, bad, login, None).await?;
        ensure!(status == 400, "{bad}: {status}");
    }
    for token in [None, login] {
        c.call(&client, "get", "/api/rooms-in-pk", "/api/rooms-in-pk", token, None).await?;
    }

    // The admin API: nothing without the admin token, not even with another credential.
    let admin_routes: Vec<(String, String)> =
        documented(&c.root).into_iter().filter(|(_, path)| path.starts_with("/admin") || path == "/metrics").collect();
    ensure!(admin_routes.len() >= 11, "{admin_routes:?}");
    for (method, template) in &admin_routes {
        let path = template.replace("{id}", "0");
        for token in [None, Some(gift), Some("dev:1")] {
            let (status, _) = c.call(&admin, method, template, &path, token, Some(b"{}")).await?;
            ensure!(status == 401, "{method} {path} with {token:?}: {status}");
        }
    }
    let token = Some(admin_token);
    let (status, body) = c.call(&admin, "get", "/admin/status", "/admin/status", token, None).await?;
    let status_body: Value = serde_json::from_slice(&body)?;
    ensure!(status == 200 && status_body["groups"].as_array().map(Vec::len) == Some(3), "{status_body}");
    let transfer = "/admin/groups/{id}/transfer-leader";
    let to_one = json!({ "to": 1 }).to_string();
    let (status, _) =
        c.call(&admin, "post", transfer, "/admin/groups/0/transfer-leader", token, Some(to_one.as_bytes())).await?;
    ensure!(status == 200);
    let (status, _) =
        c.call(&admin, "post", transfer, "/admin/groups/99/transfer-leader", token, Some(to_one.as_bytes())).await?;
    ensure!(status == 404, "{status}");
    for bad in [&b"{"[..], &b"{\"to\": \"one\"}"[..]] {
        let (status, _) = c.call(&admin, "post", transfer, "/admin/groups/0/transfer-leader", token, Some(bad)).await?;
        ensure!(status == 400 || status == 422, "{status}");
    }
    let (status, _) = c.call(&admin, "post", "/admin/balance", "/admin/balance", token, None).await?;
    ensure!(status == 200);
    let good = json!({ "key": "pk_duration", "value": "1500,300000,0,600000" }).to_string();
    let (status, _) = c.call(&admin, "post", "/admin/config", "/admin/config", token, Some(good.as_bytes())).await?;
    ensure!(status == 200);
    let bad = json!({ "key": "pk_duration", "value": "1500,300000" }).to_string();
    let (status, _) = c.call(&admin, "post", "/admin/config", "/admin/config", token, Some(bad.as_bytes())).await?;
    ensure!(status == 400);
    let other_node = json!({ "node": 99 }).to_string();
    let (status, _) =
        c.call(&admin, "post", "/admin/drain", "/admin/drain", token, Some(other_node.as_bytes())).await?;
    ensure!(status == 400, "draining another node is refused: {status}");
    let (status, _) =
        c.call(&admin, "post", "/admin/promote", "/admin/promote", token, Some(other_node.as_bytes())).await?;
    ensure!(status != 200, "promoting a node that is no learner: {status}");
    // Removing a node that is no member changes nothing, and says so with success.
    let (status, _) =
        c.call(&admin, "post", "/admin/remove", "/admin/remove", token, Some(other_node.as_bytes())).await?;
    ensure!(status == 200, "{status}");
    let (_, body) = c.call(&admin, "get", "/admin/status", "/admin/status", token, None).await?;
    let after: Value = serde_json::from_slice(&body)?;
    ensure!(after["groups"][0]["voters"] == json!([1]), "{after}");
    let members = json!({ "members": { "1": cluster.node(1)?.cluster_addr.to_string() } }).to_string();
    c.call(&admin, "post", "/admin/init", "/admin/init", token, Some(members.as_bytes())).await?;
    let missing_addr = json!({ "node": 5 }).to_string();
    let (status, _) =
        c.call(&admin, "post", "/admin/learners", "/admin/learners", token, Some(missing_addr.as_bytes())).await?;
    ensure!(status == 422, "{status}");
    let (status, body) = c.call(&admin, "get", "/admin/backup", "/admin/backup", token, None).await?;
    ensure!(status == 200 && body.starts_with(b"PKDBAK"));
    // The console's data (docs/console.md); the live feed only without its token, since
    // with it the stream does not end.
    for (template, path) in [
        ("/admin/cluster", "/admin/cluster"),
        ("/admin/digest", "/admin/digest"),
        ("/admin/pks", "/admin/pks"),
        ("/admin/lobby", "/admin/lobby"),
        ("/admin/config", "/admin/config"),
        ("/admin/audit", "/admin/audit?after=0"),
    ] {
        let (status, _) = c.call(&admin, "get", template, path, token, None).await?;
        ensure!(status == 200, "{path}: {status}");
    }
    let (status, _) = c.call(&admin, "get", "/admin/audit", "/admin/audit?after=x", token, None).await?;
    ensure!(status == 400, "{status}");
    for (method, template, path) in
        [("get", "/admin/pks/{id}", "/admin/pks/7"), ("post", "/admin/pks/{id}/abort", "/admin/pks/7/abort")]
    {
        let (status, _) = c.call(&admin, method, template, path, token, None).await?;
        ensure!(status == 404, "{path}: {status}");
        let (status, _) = c.call(&admin, method, template, &path.replace('7', "seven"), token, None).await?;
        ensure!(status == 400, "{path}: {status}");
    }
    let check = json!({ "key": "pk_duration", "value": "1500" }).to_string();
    let (status, body) =
        c.call(&admin, "post", "/admin/config/check", "/admin/config/check", token, Some(check.as_bytes())).await?;
    ensure!(status == 200 && serde_json::from_slice::<Value>(&body)?["valid"] == false, "{status}");
    // The pages: public, without data.
    for (address, template, path, expected) in [
        (&admin, "/console", "/console", 200),
        (&admin, "/console/{file}", "/console/console.js", 200),
        (&admin, "/console/{file}", "/console/style.css", 200),
        (&admin, "/console/{file}", "/console/none.js", 404),
        (&client, "/watch", "/watch?room=1", 200),
        (&client, "/watch/{file}", "/watch/watch.js", 200),
        (&client, "/watch/{file}", "/watch/none.css", 404),
    ] {
        let (status, _) = c.call(address, "get", template, path, None, None).await?;
        ensure!(status == expected, "{path}: {status}");
    }
    let (status, body) = c.call(&admin, "get", "/metrics", "/metrics", token, None).await?;
    ensure!(status == 200 && String::from_utf8_lossy(&body).contains("pkd_"), "{status}");

    // Every documented route was called, with a success where one is possible.
    let all = documented(&contract.root);
    let missing: Vec<_> = all.iter().filter(|route| !contract.seen.contains_key(*route)).collect();
    ensure!(missing.is_empty(), "routes never called: {missing:?}");
    Ok(())
}
