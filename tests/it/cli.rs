//! The real binary: user and key management and ingestion on a database
//! file shared with a server started in-process.

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::Duration;

use kamiyo_webhooks::config::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt as _;

use crate::backend::TestDatabase;
use crate::helpers::*;

/// The binary pointed at a database file in its own temporary directory.
struct Cli {
    database_url: String,
    _db: TestDatabase,
    dir: TempDir,
}

impl Cli {
    /// A fresh database, migrated by the binary itself.
    async fn migrated() -> Cli {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = TestDatabase::create(dir.path(), "cli").await;
        let cli = Cli {
            database_url: db.url.clone(),
            _db: db,
            dir,
        };
        cli.ok(&["migrate"]).await;
        cli
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("KAMIYO_DATABASE_URL", &self.database_url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("KAMIYO_") && name != "KAMIYO_DATABASE_URL" {
                command.env_remove(name);
            }
        }
        command
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.command(args);
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().expect("start the binary");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
            drop(pipe);
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{}` did not finish within 60s", args.join(" ")))
            .expect("wait for the binary")
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None).await
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "`{}` failed with {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    /// Runs a command whose stdout must be exactly one line of JSON.
    async fn ok_json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args).await;
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "`{}` should print one line: {stdout:?}",
            args.join(" ")
        );
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
    }

    async fn create_user(&self, name: &str, tier: &str) -> Value {
        self.ok_json(&["users", "create", "--name", name, "--tier", tier])
            .await
    }

    /// A server on the same database, API only.
    async fn server(&self) -> TestApp {
        let url = self.database_url.clone();
        spawn_app_with(move |cfg| {
            cfg.database_url = url;
            cfg.role = Role::Api;
        })
        .await
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write the input file");
        path.display().to_string()
    }
}

/// Every run of decimal digits in `text`.
fn numbers_in(text: &str) -> BTreeSet<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn lines_of(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

async fn migrate_exits_zero_and_can_run_again() {
    let cli = Cli::migrated().await;

    cli.ok(&["migrate"]).await;
}

async fn a_user_created_by_the_cli_can_use_the_api_of_a_server_on_the_same_database() {
    let cli = Cli::migrated().await;

    let user = cli.create_user("alice", "team").await;

    assert!(user["id"].as_i64().is_some(), "{user}");
    assert_eq!(user["name"], "alice");
    assert_eq!(user["tier"], "team");
    let key = user["api_key"].as_str().expect("api_key is a string");
    let app = cli.server().await;
    let hook = app
        .create_webhook_ok(key, &webhook("from the cli user"))
        .await;
    let list = app.list_webhooks(key).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["webhooks"][0]["id"], hook["id"]);
}

async fn creating_a_user_with_an_unknown_tier_fails() {
    let cli = Cli::migrated().await;

    let output = cli
        .run(&["users", "create", "--name", "bob", "--tier", "gold"])
        .await;

    assert!(!output.status.success(), "an unknown tier was accepted");
    let listed = cli.ok(&["users", "list"]).await;
    assert!(
        !listed.contains("bob"),
        "the user was created anyway: {listed}"
    );
}

async fn users_list_prints_one_json_object_per_user_per_line() {
    let cli = Cli::migrated().await;
    let alice = cli.create_user("alice", "team").await;
    let bob = cli.create_user("bob", "free").await;

    let stdout = cli.ok(&["users", "list"]).await;

    let users: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect();
    assert_eq!(users.len(), 2, "{stdout}");
    for created in [&alice, &bob] {
        let listed = users
            .iter()
            .find(|u| u["id"] == created["id"])
            .unwrap_or_else(|| panic!("{created} not listed: {stdout}"));
        assert_eq!(listed["name"], created["name"]);
        assert_eq!(listed["tier"], created["tier"]);
    }
}

async fn users_set_tier_changes_what_the_user_may_do_on_a_running_server() {
    let cli = Cli::migrated().await;
    let app = cli.server().await;
    let user = cli.create_user("frugal", "free").await;
    let key = user["api_key"].as_str().unwrap();
    let resp = app.create_webhook(key, &webhook("too early")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;

    let id = user["id"].to_string();
    cli.ok(&["users", "set-tier", &id, "enterprise"]).await;

    app.create_webhook_ok(key, &webhook("now allowed")).await;
    let listed = cli.ok(&["users", "list"]).await;
    let entry: Value = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|u| u["id"] == user["id"])
        .expect("the user is listed");
    assert_eq!(entry["tier"], "enterprise");
}

async fn keys_create_prints_another_working_key() {
    let cli = Cli::migrated().await;
    let user = cli.create_user("alice", "team").await;
    let first = user["api_key"].as_str().unwrap();

    let created = cli
        .ok_json(&["keys", "create", &user["id"].to_string()])
        .await;

    let second = created["api_key"].as_str().expect("api_key is a string");
    assert_ne!(first, second);
    let app = cli.server().await;
    app.create_webhook_ok(second, &webhook("second key")).await;
    assert_eq!(app.list_webhooks(first).await["total"], 1);
}

async fn a_revoked_key_is_unauthorized_and_the_others_keep_working() {
    let cli = Cli::migrated().await;
    let user = cli.create_user("alice", "team").await;
    let first = user["api_key"].as_str().unwrap().to_owned();
    let second = cli
        .ok_json(&["keys", "create", &user["id"].to_string()])
        .await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = cli.server().await;
    app.list_webhooks(&first).await;

    cli.ok(&["keys", "revoke", &first]).await;

    assert_unauthorized(
        app.user(&first, reqwest::Method::GET, WEBHOOKS)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_unauthorized(app.create_webhook(&first, &webhook("revoked")).await).await;
    assert_eq!(app.list_webhooks(&second).await["total"], 0);
}

async fn revoking_an_unknown_key_fails() {
    let cli = Cli::migrated().await;
    let user = cli.create_user("alice", "team").await;
    let key = user["api_key"].as_str().unwrap();

    let output = cli
        .run(&["keys", "revoke", &format!("{key}-not-a-key")])
        .await;

    assert!(
        !output.status.success(),
        "revoking an unknown key succeeded"
    );
    let app = cli.server().await;
    app.list_webhooks(key).await;
}

async fn ingesting_a_file_with_bad_and_duplicate_lines_stores_the_good_ones_and_exits_1() {
    let cli = Cli::migrated().await;
    let a = exploit("0xAAA1", "Ethereum", "Uniswap", 250000.0);
    let b = exploit(&unique_tx(), "arbitrum", "gmx", 1000.0);
    let mut bad = exploit(&unique_tx(), "base", "aave", 1.0);
    bad["amount_usd"] = json!(-5);
    let a_again = exploit("0xaaa1", "ethereum", "uniswap", 250000.0);
    let c = exploit(&unique_tx(), "polygon", "curve", 3.0);
    let d = exploit(&unique_tx(), "optimism", "velodrome", 4.0);
    // 4 new, 2 duplicates, 1 rejected (line 3, index 2).
    let file = cli.write(
        "exploits.jsonl",
        &lines_of(&[
            a.clone(),
            b.clone(),
            bad.clone(),
            a_again,
            c.clone(),
            d.clone(),
            b.clone(),
        ]),
    );

    let output = cli.run(&["ingest", &file]).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let counts = numbers_in(&stdout);
    for count in [4, 2, 1] {
        assert!(
            counts.contains(&count),
            "summary lacks the count {count}: {stdout}"
        );
    }
    assert!(
        stderr.contains("amount_usd"),
        "stderr names the field: {stderr}"
    );
    let mentioned = numbers_in(&stderr);
    assert!(
        mentioned.contains(&3) || mentioned.contains(&2),
        "stderr names the line or index of the bad item: {stderr}"
    );

    let app = cli.server().await;
    for good in [&a, &b, &c, &d] {
        let again = app.ingest_one(good).await;
        assert_eq!(again["duplicate"], true, "{good} was not stored: {again}");
    }
    app.ingest_new(&bad_fixed(&bad)).await;
}

/// The bad exploit made valid: it must be new, proving the bad line stored nothing.
fn bad_fixed(bad: &Value) -> Value {
    let mut fixed = bad.clone();
    fixed["amount_usd"] = json!(5);
    fixed
}

async fn a_line_that_is_not_json_is_rejected_and_the_others_are_stored() {
    let cli = Cli::migrated().await;
    let a = exploit(&unique_tx(), "ethereum", "aave", 1.0);
    let b = exploit(&unique_tx(), "ethereum", "aave", 2.0);
    let file = cli.write(
        "exploits.jsonl",
        &format!("{a}\n{{\"tx_hash\": oops\n{b}\n"),
    );

    let output = cli.run(&["ingest", &file]).await;

    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let app = cli.server().await;
    for good in [&a, &b] {
        assert_eq!(
            app.ingest_one(good).await["duplicate"],
            true,
            "{good} was not stored"
        );
    }
}

async fn ingesting_a_json_array_from_stdin_with_duplicates_exits_0() {
    let cli = Cli::migrated().await;
    let e = exploit(&unique_tx(), "Ethereum", "Aave", 10.0);
    let f = exploit(&unique_tx(), "Base", "Aerodrome", 20.0);
    let input = json!([e, f, e]).to_string();

    let output = cli.run_with_stdin(&["ingest", "-"], Some(&input)).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts = numbers_in(&stdout);
    assert!(
        counts.contains(&2) && counts.contains(&1),
        "summary: {stdout}"
    );
    let app = cli.server().await;
    for good in [&e, &f] {
        assert_eq!(
            app.ingest_one(good).await["duplicate"],
            true,
            "{good} was not stored"
        );
    }
}

async fn exploits_ingested_by_the_cli_are_queued_for_matching_webhooks() {
    let cli = Cli::migrated().await;
    let app = cli.server().await;
    let user = cli.create_user("alice", "team").await;
    let key = user["api_key"].as_str().unwrap();
    let hook = app
        .create_webhook_id(
            key,
            &json!({"name": "eth", "url": HOOK_URL, "chains": ["ethereum"]}),
        )
        .await;
    let file = cli.write(
        "exploits.json",
        &json!([
            exploit(&unique_tx(), "Ethereum", "Aave", 10.0),
            exploit(&unique_tx(), "base", "aave", 10.0),
            exploit(&unique_tx(), "ethereum", "curve", 10.0),
        ])
        .to_string(),
    );

    cli.ok(&["ingest", &file]).await;

    let page = app.deliveries_ok(key, hook, "").await;
    assert_eq!(page["total"], 2, "{page}");
    for delivery in page["deliveries"].as_array().unwrap() {
        assert_eq!(delivery["status"], "pending", "{delivery}");
        assert_eq!(delivery["event"], "exploit.detected", "{delivery}");
    }
}

crate::backend_tests!(
    migrate_exits_zero_and_can_run_again,
    a_user_created_by_the_cli_can_use_the_api_of_a_server_on_the_same_database,
    creating_a_user_with_an_unknown_tier_fails,
    users_list_prints_one_json_object_per_user_per_line,
    users_set_tier_changes_what_the_user_may_do_on_a_running_server,
    keys_create_prints_another_working_key,
    a_revoked_key_is_unauthorized_and_the_others_keep_working,
    revoking_an_unknown_key_fails,
    ingesting_a_file_with_bad_and_duplicate_lines_stores_the_good_ones_and_exits_1,
    a_line_that_is_not_json_is_rejected_and_the_others_are_stored,
    ingesting_a_json_array_from_stdin_with_duplicates_exits_0,
    exploits_ingested_by_the_cli_are_queued_for_matching_webhooks,
);
