//! Smoke test of `kamiyo-webhooks bench`: the quick throughput and ceiling scenarios run
//! through the built binary and print the JSON keys scripts rely on.

use std::process::Command;

/// Runs `bench` with `args` and returns its JSON report, failing on a non-zero exit.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"))
        .arg("bench")
        .args(args)
        .arg("--json")
        // Quiet logs; the JSON is on stdout either way.
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the kamiyo-webhooks binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"))
}

#[test]
fn quick_bench_prints_throughput_and_ceiling_as_json() {
    let report = bench_json(&["--quick", "--scenario", "throughput,ceiling"]);

    let deliveries_per_sec = report["throughput"]["deliveries_per_sec"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput.deliveries_per_sec in {report}"));
    assert!(deliveries_per_sec > 0.0, "{report}");
    let requests_per_sec = report["ceiling"]["requests_per_sec"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ceiling.requests_per_sec in {report}"));
    assert!(requests_per_sec > 0.0, "{report}");
    let ratio = report["throughput_to_ceiling"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput_to_ceiling in {report}"));
    assert!(ratio > 0.0, "{report}");
    // The process's CPU time comes from /proc: the CPU figures are there on Linux.
    if cfg!(target_os = "linux") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        for scenario in ["throughput", "ceiling"] {
            let busy = report[scenario]["cores_busy"]
                .as_f64()
                .unwrap_or_else(|| panic!("no {scenario}.cores_busy in {report}"));
            // The CPU clock's window may start a moment before the rate's.
            assert!(
                busy > 0.0 && busy <= cores * 1.25,
                "{scenario}.cores_busy {busy} on {cores} cores: {report}"
            );
        }
    }
    for scenario in ["throughput", "ceiling"] {
        let errors = report[scenario]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no {scenario}.errors in {report}"));
        assert!(errors.is_empty(), "{scenario} reported errors: {report}");
    }
}

/// With `--rounds`, every pair's ratio is printed and the figures are the median pair's.
#[test]
fn rounds_report_every_pair_and_the_median_one() {
    let report = bench_json(&[
        "--quick",
        "--scenario",
        "throughput,ceiling",
        "--rounds",
        "3",
    ]);
    let rounds: Vec<f64> = report["throughput_to_ceiling_rounds"]
        .as_array()
        .unwrap_or_else(|| panic!("no throughput_to_ceiling_rounds in {report}"))
        .iter()
        .map(|r| r.as_f64().expect("a number"))
        .collect();
    assert_eq!(rounds.len(), 3, "{report}");
    assert!(rounds.iter().all(|r| *r > 0.0), "{report}");
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let ratio = report["throughput_to_ceiling"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput_to_ceiling in {report}"));
    assert_eq!(ratio, sorted[1], "the median pair's ratio: {report}");
    let notes = report["throughput"]["notes"].to_string();
    assert!(notes.contains("the median ratio"), "{report}");
}

#[test]
fn zero_rounds_is_refused_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"))
        .args(["bench", "--quick", "--rounds", "0"])
        .output()
        .expect("run the kamiyo-webhooks binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rounds must be at least 1"), "{stderr}");
}

/// On PostgreSQL each scenario runs on a database of its own, made and dropped by the
/// bench: the database named in `--database-url` is left as it was, and none of the
/// bench's databases is left behind. (Reusing the given database had each run start on
/// the rows of the runs before it.)
#[test]
fn on_postgres_each_scenario_gets_a_new_database_that_goes_after() {
    let Some(admin) = std::env::var("KAMIYO_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        eprintln!("KAMIYO_TEST_POSTGRES_URL is not set: PostgreSQL bench test skipped");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // What the given database holds, and which bench databases exist.
    let look = || {
        runtime.block_on(async {
            use sqlx::{Connection as _, Row as _};
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to the PostgreSQL test server");
            let tables: Vec<String> = sqlx::query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .expect("list tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
            let deliveries: Option<i64> = if tables.iter().any(|t| t == "deliveries") {
                Some(
                    sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
                        .fetch_one(&mut conn)
                        .await
                        .expect("count deliveries"),
                )
            } else {
                None
            };
            let scratch: Vec<String> = sqlx::query_scalar(
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'kamiyo\\_bench\\_%'",
            )
            .fetch_all(&mut conn)
            .await
            .expect("list databases");
            conn.close().await.ok();
            (tables, deliveries, scratch)
        })
    };
    let before = look();
    let report = bench_json(&[
        "--quick",
        "--scenario",
        "throughput,latency",
        "--database-url",
        &admin,
    ]);
    for scenario in ["throughput", "latency"] {
        let errors = report[scenario]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no {scenario}.errors in {report}"));
        assert!(errors.is_empty(), "{scenario} reported errors: {report}");
    }
    assert!(
        report["throughput"]["deliveries"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    let after = look();
    assert_eq!(
        (&after.0, after.1),
        (&before.0, before.1),
        "the database in --database-url was written to"
    );
    let left: Vec<&String> = after.2.iter().filter(|d| !before.2.contains(d)).collect();
    assert!(left.is_empty(), "bench databases left behind: {left:?}");
}
