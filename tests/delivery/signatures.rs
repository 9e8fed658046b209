//! What a receiver gets: the exact body in the spec's shape, the headers, and
//! signatures that verify with an independent Rust implementation, with the
//! spec's own Python and Node.js examples run for real, and with the
//! Standard Webhooks reference library.
//!
//! The exploits carry awkward text (emoji, CJK, quotes, backslashes,
//! newlines, control characters, U+2028) and amounts with and without
//! fractions, including ones JavaScript prints in exponent form.

// CI: the Standard Webhooks check needs `pip install standardwebhooks`;
// without it that one test prints a notice and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Received, TestReceiver};

const PATH: &str = "/signed";

/// An exploit to ingest and how its fields must appear in the body.
struct Case {
    exploit: Value,
    /// `amount_usd` as JavaScript's `JSON.stringify` writes it.
    amount: &'static str,
    /// The exploit's `timestamp` as the payload must carry it.
    timestamp: &'static str,
}

fn cases() -> Vec<Case> {
    let case = |amount_in: Value, amount: &'static str, extra: Value| {
        let mut exploit = json!({
            "tx_hash": unique_tx(),
            "chain": "Ethereum",
            "protocol": "Uniswap",
            "amount_usd": amount_in,
            "timestamp": "2025-10-10T12:30:00Z",
        });
        for (k, v) in extra.as_object().unwrap() {
            exploit[k] = v.clone();
        }
        Case {
            exploit,
            amount,
            timestamp: "2025-10-10T12:30:00",
        }
    };
    let mut cases = vec![
        case(
            json!(250000),
            "250000",
            json!({
                "source": "PeckShield",
                "source_url": "https://peckshield.example/alerts/1?a=b&c=%20",
                "category": "flash_loan",
                "description": "Flash loan attack on a pool",
            }),
        ),
        case(
            json!(250000.5),
            "250000.5",
            json!({
                "protocol": "Uniswap \"v3\" 🦄",
                "source": "慢雾 SlowMist",
                "category": "reentrancy",
                "description": "Emoji 🚨🔥, CJK 池子被攻击, \"quotes\", back\\slash \\n literal,\nnew line,\r\ncrlf,\ttab, controls \u{1}\u{8}\u{c}\u{1f}\u{7f}, separators \u{2028}\u{2029}, é and ünïcödé",
            }),
        ),
        // Optional fields absent: they must be null.
        case(json!(0), "0", json!({"chain": "Arbitrum"})),
        case(
            json!(1e21),
            "1e+21",
            json!({"protocol": "Curve </script> & <b>", "category": "oracle_manipulation"}),
        ),
        case(
            json!(0.1),
            "0.1",
            json!({"description": "tiny \u{2} stx and \u{1b}[31m escape"}),
        ),
    ];
    let mut offset = case(json!(123.25), "123.25", json!({}));
    offset.exploit["timestamp"] = json!("2025-10-10T14:30:00+02:00");
    cases.push(offset);
    cases
}

/// A JSON string or `null`, escaped as `JSON.stringify` escapes it.
fn js(value: &Value) -> String {
    match value {
        Value::Null | Value::String(_) => serde_json::to_string(value).unwrap(),
        other => panic!("not a string field: {other}"),
    }
}

/// The body the spec prescribes for `case`, given the ids the app assigned.
fn expected_body(case: &Case, exploit_id: i64, detected_at: i64) -> String {
    let e = &case.exploit;
    format!(
        concat!(
            r#"{{"event":"exploit.detected","timestamp":{},"exploit":{{"id":{},"tx_hash":{},"#,
            r#""chain":{},"protocol":{},"amount_usd":{},"timestamp":"{}","source":{},"#,
            r#""source_url":{},"category":{},"description":{}}}}}"#
        ),
        detected_at,
        exploit_id,
        js(&e["tx_hash"]),
        js(&e["chain"]),
        js(&e["protocol"]),
        case.amount,
        case.timestamp,
        js(&e["source"]),
        js(&e["source_url"]),
        js(&e["category"]),
        js(&e["description"]),
    )
}

/// One real delivery per case to one webhook.
struct Delivered {
    _receiver: TestReceiver,
    _app: TestApp,
    hook: Hook,
    /// (case, exploit id, the request the receiver got)
    deliveries: Vec<(Case, i64, Received)>,
    ingested_from: i64,
    ingested_to: i64,
}

async fn deliver_every_case() -> Delivered {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |_| {}).await;
    let hook = app.hook_to(&receiver.url(PATH)).await;

    let ingested_from = unix_now();
    let mut pending = Vec::new();
    for case in cases() {
        let id = app.ingest_one(case.exploit.clone()).await;
        pending.push((case, id));
    }
    let ingested_to = unix_now();

    let requests = receiver
        .wait_for(PATH, pending.len(), Duration::from_secs(15))
        .await;
    let deliveries = pending
        .into_iter()
        .map(|(case, id)| {
            let req = requests
                .iter()
                .find(|r| r.json()["exploit"]["id"] == id)
                .unwrap_or_else(|| panic!("no request carried exploit {id}"))
                .clone();
            (case, id, req)
        })
        .collect();
    Delivered {
        _receiver: receiver,
        _app: app,
        hook,
        deliveries,
        ingested_from,
        ingested_to,
    }
}

async fn every_delivery_is_the_exact_compact_spec_body_with_verifiable_headers() {
    let d = deliver_every_case().await;

    for (case, id, req) in &d.deliveries {
        assert_signed_delivery(req, &d.hook.secret, "exploit.detected");
        let detected_at = req.json()["timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("top-level timestamp is not an integer: {}", req.text()));
        assert!(
            (d.ingested_from - 1..=d.ingested_to + 1).contains(&detected_at),
            "timestamp {detected_at} is not the ingestion time ({}..{})",
            d.ingested_from,
            d.ingested_to
        );
        assert_eq!(
            req.text(),
            expected_body(case, *id, detected_at),
            "the body differs from the spec's compact shape"
        );
    }
}

async fn the_signature_verifies_with_an_independent_hmac_and_fails_with_another_secret() {
    let d = deliver_every_case().await;

    for (_, _, req) in &d.deliveries {
        assert!(kamiyo_signature_matches(req, &d.hook.secret));
        assert!(!kamiyo_signature_matches(req, "whsec_not-the-secret"));
        let mut tampered = req.clone();
        tampered.body.push(b' ');
        assert!(!kamiyo_signature_matches(&tampered, &d.hook.secret));
    }
}

async fn standard_webhooks_headers_verify_with_an_independent_implementation() {
    let d = deliver_every_case().await;

    for (_, _, req) in &d.deliveries {
        assert_eq!(req.header("webhook-id"), req.header("x-kamiyo-delivery"));
        let ts: i64 = req.header("webhook-timestamp").parse().unwrap();
        assert!(
            (ts - unix_now()).abs() < 300,
            "webhook-timestamp {ts} is outside the standard's five-minute tolerance"
        );
        assert!(req.header("webhook-signature").starts_with("v1,"));
        assert!(standard_signature_matches(req, &d.hook.secret));
        let other = format!("whsec_{}", "A".repeat(43) + "=");
        assert!(!standard_signature_matches(req, &other));
    }
}

async fn the_spec_python_example_verifies_real_deliveries() {
    let d = deliver_every_case().await;
    let dir = tempfile::tempdir().unwrap();

    for (n, (_, _, req)) in d.deliveries.iter().enumerate() {
        let files = write_request(dir.path(), n, req);
        let good = run_verifier("python3", "verify_kamiyo.py", &files, &d.hook.secret);
        assert_verified(&good, "the spec's Python example", req);
        let bad = run_verifier("python3", "verify_kamiyo.py", &files, "whsec_wrong");
        assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    }
}

async fn the_spec_node_example_verifies_real_deliveries_and_json_stringify_gives_back_the_same_bytes(
) {
    let d = deliver_every_case().await;
    let dir = tempfile::tempdir().unwrap();

    for (n, (_, _, req)) in d.deliveries.iter().enumerate() {
        let files = write_request(dir.path(), n, req);
        let good = run_verifier("node", "verify_kamiyo.js", &files, &d.hook.secret);
        assert_verified(&good, "the spec's Node.js example", req);
        let report: Value = serde_json::from_slice(&good.stdout)
            .unwrap_or_else(|e| panic!("node printed no report ({e}): {}", describe(&good)));
        assert_eq!(report["identical"], true);
        assert_eq!(report["keys"], json!(["event", "timestamp", "exploit"]));
        assert_eq!(
            report["exploit_keys"],
            json!([
                "id",
                "tx_hash",
                "chain",
                "protocol",
                "amount_usd",
                "timestamp",
                "source",
                "source_url",
                "category",
                "description"
            ])
        );
        let bad = run_verifier("node", "verify_kamiyo.js", &files, "whsec_wrong");
        assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    }
}

async fn the_standard_webhooks_python_library_verifies_real_deliveries() {
    let importable = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !importable {
        eprintln!(
            "NOTICE: skipping the Standard Webhooks library check: \
             python3 cannot import standardwebhooks (pip install standardwebhooks)"
        );
        return;
    }
    let d = deliver_every_case().await;
    let dir = tempfile::tempdir().unwrap();

    for (n, (_, _, req)) in d.deliveries.iter().enumerate() {
        let files = write_request(dir.path(), n, req);
        let good = run_verifier("python3", "verify_standard.py", &files, &d.hook.secret);
        assert_verified(&good, "the standardwebhooks library", req);
        let other = format!("whsec_{}", "A".repeat(43) + "=");
        let bad = run_verifier("python3", "verify_standard.py", &files, &other);
        assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    }
}

/// The body and headers of a request, as files for the scripts.
struct RequestFiles {
    body: PathBuf,
    headers: PathBuf,
}

fn write_request(dir: &Path, n: usize, req: &Received) -> RequestFiles {
    let body = dir.join(format!("body-{n}.json"));
    let headers = dir.join(format!("headers-{n}.json"));
    std::fs::write(&body, &req.body).unwrap();
    let map: serde_json::Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(v.to_str().unwrap().to_owned()),
            )
        })
        .collect();
    std::fs::write(&headers, serde_json::to_vec(&map).unwrap()).unwrap();
    RequestFiles { body, headers }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/delivery/scripts")
        .join(name)
}

fn run_verifier(
    interpreter: &str,
    name: &str,
    files: &RequestFiles,
    secret: &str,
) -> std::process::Output {
    Command::new(interpreter)
        .arg(script(name))
        .arg(&files.body)
        .arg(&files.headers)
        .arg(secret)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {interpreter} {name}: {e}"))
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_verified(out: &std::process::Output, who: &str, req: &Received) {
    assert!(
        out.status.success(),
        "{who} rejected the delivery {}:\n{}",
        req.text(),
        describe(out)
    );
}

crate::backend_tests!(
    every_delivery_is_the_exact_compact_spec_body_with_verifiable_headers,
    the_signature_verifies_with_an_independent_hmac_and_fails_with_another_secret,
    standard_webhooks_headers_verify_with_an_independent_implementation,
    the_spec_python_example_verifies_real_deliveries,
    the_spec_node_example_verifies_real_deliveries_and_json_stringify_gives_back_the_same_bytes,
    the_standard_webhooks_python_library_verifies_real_deliveries,
);
