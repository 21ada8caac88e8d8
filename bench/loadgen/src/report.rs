//! Shared pieces of the scenario reports: CPU accounting for the server
//! and for loadgen itself, and latency formatting.
//!
//! Loadgen's own CPU share is always reported: a figure near 100 % means
//! loadgen, not the server, was the bottleneck and the run says little about
//! the server.

use crate::error::{Fail, Result};
use crate::stats::{self, CpuMeter, Histogram, Json};

/// Fails early, with a clear message, if `pid` names no readable process.
pub fn check_pid(pid: Option<&str>) -> Result<()> {
    if let Some(pid) = pid {
        stats::cpu_ticks(pid).map_err(|e| {
            Fail::run(format!(
                "--server-pid {pid}: cannot read /proc/{pid}/stat: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Starts CPU meters for the server (if known) and for this process.
pub fn start_cpu(server_pid: Option<&str>) -> Result<(Option<CpuMeter>, CpuMeter)> {
    let server = server_pid
        .map(|pid| {
            CpuMeter::start(pid).map_err(|e| Fail::run(format!("reading /proc/{pid}/stat: {e}")))
        })
        .transpose()?;
    let own = CpuMeter::start("self").map_err(|e| Fail::run(format!("/proc/self/stat: {e}")))?;
    Ok((server, own))
}

/// CPU microseconds used since [`start_cpu`]: (server, loadgen).
pub fn stop_cpu(server: Option<CpuMeter>, own: &CpuMeter) -> Result<(Option<f64>, f64)> {
    let server_us = server
        .map(|m| {
            m.used_us()
                .map_err(|e| Fail::run(format!("reading the server's CPU time: {e}")))
        })
        .transpose()?;
    let own_us = own
        .used_us()
        .map_err(|e| Fail::run(format!("/proc/self/stat: {e}")))?;
    Ok((server_us, own_us))
}

/// CPU figures of a measured stretch.
pub struct Figures {
    pub server_us: Option<f64>,
    pub own_us: f64,
    /// Wall-clock seconds of the stretch.
    pub elapsed: f64,
    /// Units of work done in it (messages, deliveries), for per-unit cost.
    pub work: u64,
}

impl Figures {
    fn share(us: f64, elapsed: f64) -> f64 {
        us / (elapsed * 1e6) * 100.0
    }

    pub fn print(&self, unit: &str) {
        match self.server_us {
            Some(us) => println!(
                "  server CPU:  {:.1} % of a core, {:.3} us per {unit} (clock-tick resolution)",
                Self::share(us, self.elapsed),
                us / self.work.max(1) as f64
            ),
            None => println!("  server CPU:  not measured (no --server-pid)"),
        }
        println!(
            "  loadgen CPU: {:.1} % of a core",
            Self::share(self.own_us, self.elapsed)
        );
    }

    pub fn add_json(&self, json: Json, unit: &str) -> Json {
        let per_unit = self.server_us.map(|us| us / self.work.max(1) as f64);
        json.opt_num(
            "server_cpu_pct",
            self.server_us.map(|us| Self::share(us, self.elapsed)),
            1,
        )
        .opt_num(&format!("server_cpu_us_per_{unit}"), per_unit, 4)
        .num("loadgen_cpu_pct", Self::share(self.own_us, self.elapsed), 1)
    }
}

/// `p50 12.3 us  p99 …  max …` for the given quantiles.
pub fn latency_line(h: &Histogram, quantiles: &[f64]) -> String {
    let mut line = String::new();
    for &q in quantiles {
        let label = format!("p{}", q * 100.0);
        line.push_str(&format!("{label} {}  ", micros(h.quantile(q))));
    }
    line.push_str(&format!("max {}  (n = {})", micros(h.max()), h.count()));
    line
}

fn micros(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}
