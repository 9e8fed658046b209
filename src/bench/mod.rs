//! `kamiyo-webhooks bench`: starts the service in-process on a fresh database, with its own
//! fast local receiver, drives it through the HTTP API and prints what it measured.
//!
//! Everything runs in this one process on purpose: one clock (`Instant`) for ingest and
//! receipt times, and nothing to set up. The price is that memory figures cover the
//! service, the receiver and the driver together, which the report says. Each scenario
//! gets its own service, database and receiver so that none inherits another's backlog.

mod api;
mod pki;
pub(crate) mod receiver;
mod report;
mod scenarios;
mod service;
mod stats;

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::config::Config;
use report::Report;
use scenarios::Env;

/// The scenarios run when `--scenario` is not given: a few minutes on two cores.
const DEFAULT_SCENARIOS: [Scenario; 5] = [
    Scenario::Throughput,
    Scenario::Ceiling,
    Scenario::Latency,
    Scenario::Isolation,
    Scenario::Fanout,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Exploits matching every webhook, ingested as fast as ingest allows: deliveries/s.
    Throughput,
    /// The same receiver driven by a plain HTTP client: this machine's raw limit.
    Ceiling,
    /// A steady rate of exploits: ingest-to-receipt percentiles.
    Latency,
    /// The latency scenario with half the endpoints never answering.
    Isolation,
    /// One exploit matching thousands of webhooks: time to the last receipt.
    Fanout,
    /// A large queue for an endpoint that is down, then up: memory and drain rate.
    Backlog,
    /// Delivery-log pages over a large table: listing latency.
    Logs,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Ceiling => "ceiling",
            Scenario::Latency => "latency",
            Scenario::Isolation => "isolation",
            Scenario::Fanout => "fanout",
            Scenario::Backlog => "backlog",
            Scenario::Logs => "logs",
        }
    }
}

/// Measure the service on this machine (in-process service, database and receiver).
#[derive(Debug, Clone, Args)]
#[command(after_help = "Logs go to stderr; RUST_LOG=warn keeps them quiet.\n\
Scenarios: throughput, ceiling, latency, isolation, fanout (the default set), backlog, logs.")]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated (default: throughput,ceiling,latency,isolation,fanout).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Shrink every scenario to seconds.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object keyed by scenario name instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Deliver over HTTPS (a CA made at start, trusted through `extra_ca_certs`).
    #[arg(long)]
    pub tls: bool,
    /// Webhooks in the throughput scenario [default: 1000; quick: 100].
    #[arg(long)]
    pub webhooks: Option<usize>,
    /// Exploits in the throughput scenario [default: 50].
    #[arg(long)]
    pub exploits: Option<usize>,
    /// Exploits per second in the latency and isolation scenarios.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds of steady load in the latency and isolation scenarios [default: 10; quick: 2].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Concurrent delivery attempts of the service (and of the ceiling client).
    #[arg(long, default_value_t = Config::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Concurrent delivery attempts to one webhook.
    #[arg(long, default_value_t = Config::default().max_in_flight_per_endpoint)]
    pub max_in_flight_per_endpoint: usize,
    /// Deliver with this many `serve --role worker` child processes instead of in-process
    /// workers (the in-process service then runs the API only). PostgreSQL only: a SQLite
    /// database belongs to one process.
    #[arg(long, default_value_t = 0)]
    pub worker_processes: usize,
    /// Pairs of `throughput` then `ceiling` to run, alternated, when both are selected;
    /// their figures are the pair's with the median ratio, and every pair's ratio is
    /// printed. On a shared machine one pair's ratio moved by half between runs, and by a
    /// tenth on a quiet one [default: 3; quick: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// Pairs of `throughput` and `ceiling` when `--rounds` is not given: one pair's ratio is
/// one sample of a figure that moved between 0.46 and 0.53 in five runs of the default
/// set on one quiet machine; the median of three moves less, for 16 s more (48 s
/// against 32 s for the default set on a 2-core AMD EPYC host).
const DEFAULT_ROUNDS: usize = 3;

impl BenchArgs {
    /// Pairs of `throughput` and `ceiling` to run when both are selected.
    fn pairs(&self) -> usize {
        self.rounds
            .unwrap_or(if self.quick { 1 } else { DEFAULT_ROUNDS })
    }
}

/// Runs the selected scenarios and prints the report. `database_url` is the global
/// `--database-url` flag: absent means a fresh SQLite file in a temporary directory per
/// scenario. Returns 1 when a scenario reported an error (e.g. a signature mismatch).
pub async fn run(args: BenchArgs, database_url: Option<String>) -> anyhow::Result<i32> {
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let rounds = args.pairs();
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.max_in_flight == 0 || args.max_in_flight_per_endpoint == 0 {
        bail!("--max-in-flight and --max-in-flight-per-endpoint must be at least 1");
    }
    if args.worker_processes > 0
        && !database_url
            .as_deref()
            .is_some_and(crate::store::is_postgres_url)
    {
        bail!("--worker-processes needs --database-url postgres://...: a SQLite database belongs to one process");
    }
    let selected = selected_scenarios(&args.scenario);
    let env = Env {
        quick: args.quick,
        tls: args.tls,
        database_url,
        max_in_flight: args.max_in_flight,
        max_in_flight_per_endpoint: args.max_in_flight_per_endpoint,
        worker_processes: args.worker_processes,
        webhooks: args.webhooks,
        exploits: args.exploits,
        rate: args.rate,
        duration: args
            .duration
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(if args.quick { 2 } else { 10 })),
    };
    let mut report = Report::new(&env);
    let paired = rounds > 1
        && selected.contains(&Scenario::Throughput)
        && selected.contains(&Scenario::Ceiling);
    let mut pairs_done = false;
    for scenario in selected {
        if paired && matches!(scenario, Scenario::Throughput | Scenario::Ceiling) {
            if !pairs_done {
                run_pairs(&env, rounds, &mut report).await;
                pairs_done = true;
            }
            continue;
        }
        let r = run_scenario(scenario, &env, &report).await;
        report.push(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.has_errors() { 1 } else { 0 })
}

/// One scenario's report; one that could not even run reports that as its error, and the
/// others still run and report.
async fn run_scenario(scenario: Scenario, env: &Env, report: &Report) -> report::ScenarioReport {
    tracing::info!(scenario = scenario.name(), "bench scenario starting");
    scenarios::run(scenario, env, report)
        .await
        .unwrap_or_else(|e| report::ScenarioReport::failed(scenario.name(), &e))
}

/// `rounds` pairs of `throughput` then `ceiling`; the report gets the pair with the median
/// ratio (a pair with an error instead, so no error is hidden) and every pair's ratio.
async fn run_pairs(env: &Env, rounds: usize, report: &mut Report) {
    let mut pairs = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        tracing::info!(round, rounds, "bench pair starting");
        let throughput = run_scenario(Scenario::Throughput, env, report).await;
        let ceiling = run_scenario(Scenario::Ceiling, env, report).await;
        pairs.push((throughput, ceiling));
    }
    let ratios: Vec<Option<f64>> = pairs
        .iter()
        .map(|(t, c)| report::ratio(t, c, "requests_per_sec"))
        .collect();
    let failed = pairs
        .iter()
        .position(|(t, c)| t.has_errors() || c.has_errors());
    let chosen = failed
        .or_else(|| median_index(&ratios))
        .unwrap_or(rounds - 1);
    report.set_pair_ratios(ratios.iter().map(|r| r.unwrap_or(0.0)).collect());
    let (mut throughput, ceiling) = pairs.swap_remove(chosen);
    throughput.note(format!(
        "throughput and ceiling are pair {} of {rounds}, the one with the median ratio",
        chosen + 1
    ));
    report.push(throughput);
    report.push(ceiling);
}

/// The index of the median of the known values (the lower middle one of an even number).
fn median_index(values: &[Option<f64>]) -> Option<usize> {
    let mut known: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    if known.is_empty() {
        return None;
    }
    known.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(known[(known.len() - 1) / 2].0)
}

/// The scenarios in the order given, without repeats; the default set when none.
fn selected_scenarios(given: &[Scenario]) -> Vec<Scenario> {
    let mut out = Vec::new();
    for s in if given.is_empty() {
        &DEFAULT_SCENARIOS[..]
    } else {
        given
    } {
        if !out.contains(s) {
            out.push(*s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_args(args: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("valid bench arguments")
            .bench
    }

    #[test]
    fn the_full_set_runs_three_pairs_the_quick_one_one_and_rounds_overrides_both() {
        assert_eq!(bench_args(&[]).pairs(), 3);
        assert_eq!(bench_args(&["--quick"]).pairs(), 1);
        assert_eq!(bench_args(&["--rounds", "5"]).pairs(), 5);
        assert_eq!(bench_args(&["--quick", "--rounds", "2"]).pairs(), 2);
        assert_eq!(bench_args(&["--rounds", "1"]).pairs(), 1);
    }

    #[test]
    fn the_median_pair_is_the_middle_ratio_or_the_lower_middle_one() {
        assert_eq!(median_index(&[Some(0.5), Some(0.3), Some(0.4)]), Some(2));
        assert_eq!(
            median_index(&[Some(0.9), Some(0.1), Some(0.4), Some(0.5)]),
            Some(2)
        );
        assert_eq!(median_index(&[None, Some(0.2), None]), Some(1));
        assert_eq!(median_index(&[None, None]), None);
        assert_eq!(median_index(&[]), None);
    }

    #[test]
    fn no_scenario_means_the_default_set_and_repeats_run_once() {
        assert_eq!(selected_scenarios(&[]), DEFAULT_SCENARIOS.to_vec());
        assert_eq!(
            selected_scenarios(&[Scenario::Ceiling, Scenario::Throughput, Scenario::Ceiling]),
            vec![Scenario::Ceiling, Scenario::Throughput]
        );
    }
}
