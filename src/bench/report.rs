//! What the bench measured: per-scenario metrics, notes and errors, printed as a table for
//! people or as one JSON object keyed by scenario name for scripts.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::scenarios::Env;

/// One measured value: its JSON key, its label in the table, and its unit.
#[derive(Debug, Clone)]
struct Metric {
    key: &'static str,
    label: &'static str,
    value: Value,
    unit: &'static str,
}

#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub name: &'static str,
    metrics: Vec<Metric>,
    notes: Vec<String>,
    errors: Vec<String>,
}

impl ScenarioReport {
    pub fn new(name: &'static str) -> ScenarioReport {
        ScenarioReport {
            name,
            metrics: Vec::new(),
            notes: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A scenario that could not run to the end, with the whole cause chain.
    pub fn failed(name: &'static str, e: &anyhow::Error) -> ScenarioReport {
        let mut r = ScenarioReport::new(name);
        r.error(format!("{e:#}"));
        r
    }

    /// A measured number, rounded to what the measurement can tell.
    pub fn number(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: f64,
        unit: &'static str,
    ) {
        let rounded = (value * 1000.0).round() / 1000.0;
        let value = serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number);
        self.metrics.push(Metric {
            key,
            label,
            value,
            unit,
        });
    }

    pub fn count(&mut self, key: &'static str, label: &'static str, value: u64) {
        self.metrics.push(Metric {
            key,
            label,
            value: Value::from(value),
            unit: "",
        });
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.key == key)
            .and_then(|m| m.value.as_f64())
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn error(&mut self, error: impl Into<String>) {
        self.errors.push(error.into());
    }

    pub fn errors(&mut self, errors: impl IntoIterator<Item = String>) {
        self.errors.extend(errors);
    }

    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        for m in &self.metrics {
            obj.insert(m.key.to_owned(), m.value.clone());
        }
        obj.insert("notes".into(), Value::from(self.notes.clone()));
        obj.insert("errors".into(), Value::from(self.errors.clone()));
        Value::Object(obj)
    }
}

pub struct Report {
    header: String,
    scenarios: Vec<ScenarioReport>,
    /// Throughput over ceiling of each pair with `--rounds`, in the order run.
    pair_ratios: Vec<f64>,
}

/// Deliveries/s of `throughput` over `ceiling`'s figure `key`, to three decimals.
pub fn ratio(throughput: &ScenarioReport, ceiling: &ScenarioReport, key: &str) -> Option<f64> {
    let t = throughput.get("deliveries_per_sec")?;
    let c = ceiling.get(key)?;
    (c > 0.0).then(|| (t / c * 1000.0).round() / 1000.0)
}

impl Report {
    pub fn new(env: &Env) -> Report {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let header = format!(
            "kamiyo-webhooks bench: {} run, {}, {}, {cores} cores, max_in_flight {} ({} per endpoint)",
            if env.quick { "quick" } else { "full" },
            if env.tls { "HTTPS" } else { "plain HTTP" },
            match env.database_url.as_deref() {
                Some(u) if crate::store::is_postgres_url(u) => "a new PostgreSQL database per scenario",
                Some(_) => "given database",
                None => "fresh SQLite per scenario",
            },
            env.max_in_flight,
            env.max_in_flight_per_endpoint,
        );
        Report {
            header,
            scenarios: Vec::new(),
            pair_ratios: Vec::new(),
        }
    }

    pub fn push(&mut self, r: ScenarioReport) {
        self.scenarios.push(r);
    }

    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    pub fn has_errors(&self) -> bool {
        self.scenarios.iter().any(ScenarioReport::has_errors)
    }

    pub fn set_pair_ratios(&mut self, ratios: Vec<f64>) {
        self.pair_ratios = ratios;
    }

    /// Deliveries/s of the service over requests/s of a plain client on the same receiver.
    pub fn throughput_to_ceiling(&self) -> Option<f64> {
        ratio(
            self.scenario("throughput")?,
            self.scenario("ceiling")?,
            "requests_per_sec",
        )
    }

    /// The same over the ceiling reqwest reached.
    pub fn throughput_to_reqwest_ceiling(&self) -> Option<f64> {
        ratio(
            self.scenario("throughput")?,
            self.scenario("ceiling")?,
            "reqwest_requests_per_sec",
        )
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        for s in &self.scenarios {
            obj.insert(s.name.to_owned(), s.to_json());
        }
        if let Some(ratio) = self.throughput_to_ceiling() {
            obj.insert("throughput_to_ceiling".into(), Value::from(ratio));
        }
        if let Some(ratio) = self.throughput_to_reqwest_ceiling() {
            obj.insert("throughput_to_reqwest_ceiling".into(), Value::from(ratio));
        }
        if !self.pair_ratios.is_empty() {
            obj.insert(
                "throughput_to_ceiling_rounds".into(),
                Value::from(self.pair_ratios.clone()),
            );
        }
        Value::Object(obj)
    }

    pub fn to_table(&self) -> String {
        let mut rows: Vec<[String; 3]> = Vec::new();
        for s in &self.scenarios {
            for (i, m) in s.metrics.iter().enumerate() {
                let name = if i == 0 {
                    s.name.to_owned()
                } else {
                    String::new()
                };
                rows.push([name, m.label.to_owned(), format_value(&m.value, m.unit)]);
            }
            if s.metrics.is_empty() {
                rows.push([s.name.to_owned(), "(no result)".into(), String::new()]);
            }
        }
        if let Some(ratio) = self.throughput_to_ceiling() {
            rows.push([
                "throughput / ceiling".into(),
                String::new(),
                format!("{ratio:.3}"),
            ]);
        }
        if let Some(ratio) = self.throughput_to_reqwest_ceiling() {
            rows.push([
                "throughput / reqwest ceiling".into(),
                String::new(),
                format!("{ratio:.3}"),
            ]);
        }
        if !self.pair_ratios.is_empty() {
            let each: Vec<String> = self.pair_ratios.iter().map(|r| format!("{r:.3}")).collect();
            rows.push([
                "throughput / ceiling".into(),
                "each pair, in the order run".into(),
                each.join(" "),
            ]);
        }
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(8);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(6);
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.header);
        let _ = writeln!(out, "{:<w0$}  {:<w1$}  VALUE", "SCENARIO", "METRIC");
        for r in &rows {
            let _ = writeln!(out, "{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
        }
        for s in &self.scenarios {
            for n in &s.notes {
                let _ = writeln!(out, "note ({}): {n}", s.name);
            }
        }
        let errors: Vec<_> = self
            .scenarios
            .iter()
            .flat_map(|s| s.errors.iter().map(move |e| (s.name, e)))
            .collect();
        if errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            for (name, e) in errors {
                let _ = writeln!(out, "ERROR ({name}): {e}");
            }
        }
        out
    }
}

fn format_value(v: &Value, unit: &str) -> String {
    let number = match v {
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.abs() >= 100.0 {
                format!("{f:.0}")
            } else if f.abs() >= 10.0 {
                format!("{f:.1}")
            } else {
                format!("{f:.2}")
            }
        }
        Value::Null => "n/a".into(),
        other => other.to_string(),
    };
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            quick: true,
            tls: false,
            database_url: None,
            max_in_flight: 256,
            max_in_flight_per_endpoint: 16,
            worker_processes: 0,
            webhooks: None,
            exploits: None,
            rate: 100,
            duration: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn json_is_keyed_by_scenario_with_the_ratio_on_top() {
        let mut report = Report::new(&env());
        let mut t = ScenarioReport::new("throughput");
        t.number("deliveries_per_sec", "deliveries/s", 500.0, "/s");
        let mut c = ScenarioReport::new("ceiling");
        c.number("requests_per_sec", "requests/s", 2000.0, "/s");
        c.number("reqwest_requests_per_sec", "requests/s", 1000.0, "/s");
        report.push(t);
        report.push(c);
        let json = report.to_json();
        assert_eq!(json["throughput"]["deliveries_per_sec"], 500.0);
        assert_eq!(json["ceiling"]["requests_per_sec"], 2000.0);
        assert_eq!(json["throughput_to_ceiling"], 0.25);
        assert_eq!(json["throughput_to_reqwest_ceiling"], 0.5);
        assert!(json["throughput"]["errors"].as_array().unwrap().is_empty());
        let table = report.to_table();
        assert!(table.contains("deliveries/s"));
        assert!(table.contains("errors: none"));
    }
}
