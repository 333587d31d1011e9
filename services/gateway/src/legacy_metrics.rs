//! The old TTS API's metric names, so its dashboards and alerts keep working:
//! `tts_generation_duration_seconds` (a synthesis from request to the last byte),
//! `tts_model_loaded` (1 while tts-inference answers its readiness check),
//! `system_cpu_percent` and `system_memory_percent` (the machine's, from `/proc`, as the old
//! API reported them with psutil; in a container they describe the node). `http_requests_total`
//! and `api_key_rate_limit_exceeded_total` are recorded where they happen.

use std::time::Duration;

use lifecycle::Readiness;
use prometheus::{Gauge, Histogram, HistogramOpts, IntGauge, Registry};
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
const EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct LegacyMetrics {
    pub generation: Histogram,
    model_loaded: IntGauge,
    cpu: Gauge,
    memory: Gauge,
}

impl LegacyMetrics {
    pub fn new(registry: &Registry) -> Self {
        let generation = Histogram::with_opts(
            HistogramOpts::new(
                "tts_generation_duration_seconds",
                "Time from a speech request to its last byte of audio, through the gateway.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        )
        .expect("metric definition is valid");
        let model_loaded = IntGauge::new(
            "tts_model_loaded",
            "Whether the voice service (tts-inference) passes the gateway's readiness check (1) or not (0).",
        )
        .expect("metric definition is valid");
        let cpu = Gauge::new(
            "system_cpu_percent",
            "The machine's CPU use over the last few seconds, in percent of all cores.",
        )
        .expect("metric definition is valid");
        let memory = Gauge::new(
            "system_memory_percent",
            "The machine's memory in use (total minus available), in percent.",
        )
        .expect("metric definition is valid");
        for metric in [
            Box::new(generation.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(model_loaded.clone()),
            Box::new(cpu.clone()),
            Box::new(memory.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self {
            generation,
            model_loaded,
            cpu,
            memory,
        }
    }

    /// Refreshes the gauges until shutdown.
    pub async fn run(self, readiness: Readiness, shutdown: CancellationToken) {
        let mut previous = cpu_times();
        let mut first = true;
        loop {
            // The first refresh comes at once (memory and the voice), the CPU's after one interval.
            if !std::mem::take(&mut first) {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
            let loaded = readiness.last_report().is_some_and(|report| {
                report
                    .components
                    .get("tts-inference")
                    .is_some_and(|c| c.status == "up")
            });
            self.model_loaded.set(i64::from(loaded));
            let now = cpu_times();
            if let (Some((busy0, total0)), Some((busy1, total1))) = (previous, now)
                && total1 > total0
            {
                self.cpu
                    .set(100.0 * (busy1 - busy0) as f64 / (total1 - total0) as f64);
            }
            previous = now;
            if let Some(percent) = memory_percent() {
                self.memory.set(percent);
            }
        }
    }
}

/// (busy, total) jiffies of all CPUs, from `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    let total: u64 = fields.iter().take(8).sum();
    Some((total.saturating_sub(idle), total))
}

/// Memory in use, in percent, from `/proc/meminfo`.
fn memory_percent() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
    };
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    (total > 0.0).then(|| 100.0 * (total - available) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_read_from_proc() {
        let (busy, total) = cpu_times().expect("/proc/stat is readable");
        assert!(total > 0 && busy <= total);
        let memory = memory_percent().expect("/proc/meminfo is readable");
        assert!((0.0..=100.0).contains(&memory), "{memory}");
    }
}
