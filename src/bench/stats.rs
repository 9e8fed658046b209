//! Small measuring tools: percentiles, this process's memory from /proc, progress bars.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// p50, p95, p99, max and mean of a sample, in its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// `None` for an empty sample. Nearest-rank percentiles.
    pub fn of(sample: &[f64]) -> Option<Percentiles> {
        if sample.is_empty() {
            return None;
        }
        let mut sorted = sample.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Some(Percentiles {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// A field of /proc/self/status in MiB (`VmHWM` peak resident set, `VmRSS` current).
/// `None` off Linux.
pub fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time this process has used (all threads, user and system), in seconds: beside a
/// rate, what each request cost, a figure a noisy neighbour moves far less than the rate.
/// `/proc/self/stat` counts in USER_HZ ticks, 100 per second on Linux.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Microseconds of CPU per item between two `process_cpu_secs` readings.
pub fn cpu_us_per(before: Option<f64>, after: Option<f64>, items: u64) -> Option<f64> {
    let (b, a) = (before?, after?);
    (items > 0).then(|| (a - b) * 1e6 / items as f64)
}

/// Starts a new peak-RSS window: Linux resets VmHWM to the current RSS when "5" is
/// written to clear_refs. Without it (old kernels, other systems) the peak is the
/// process's lifetime peak, which the report then says.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what:<28} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
    ))
    .expect("a valid template");
    ProgressBar::new(len).with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sample: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&sample).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&[7.0]).unwrap().p99, 7.0);
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn memory_is_read_from_proc_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_mib("VmHWM").unwrap() > 0.0);
            assert!(proc_status_mib("VmRSS").unwrap() > 0.0);
        }
    }
}
