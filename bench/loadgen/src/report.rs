//! Shared pieces of the scenario reports: CPU accounting for the server
//! (summed over its processes when it runs as several), for a process it
//! depends on (`--bus-pid`, e.g. Redis) and for loadgen itself, and latency
//! formatting.
//!
//! Loadgen's own CPU share is always reported: a figure near 100 % means
//! loadgen, not the server, was the bottleneck and the run says little about
//! the server.

use crate::cli::Common;
use crate::error::{Fail, Result};
use crate::stats::{self, CpuMeter, Histogram, Json};

/// Fails early, with a clear message, if a pid names no readable process.
pub fn check_pids(common: &Common) -> Result<()> {
    for pid in common.server_pids.iter().chain(&common.bus_pid) {
        stats::cpu_ticks(pid)
            .map_err(|e| Fail::run(format!("pid {pid}: cannot read /proc/{pid}/stat: {e}")))?;
    }
    Ok(())
}

/// CPU meters over one measured stretch: the server's processes, the
/// process it depends on (if named) and this one.
pub struct Meters {
    servers: Vec<CpuMeter>,
    bus: Option<CpuMeter>,
    own: CpuMeter,
}

/// CPU microseconds used over a stretch.
pub struct Used {
    /// Summed over the server's processes; `None` if none was named.
    pub server_us: Option<f64>,
    pub bus_us: Option<f64>,
    pub own_us: f64,
}

fn meter(pid: &str) -> Result<CpuMeter> {
    CpuMeter::start(pid).map_err(|e| Fail::run(format!("reading /proc/{pid}/stat: {e}")))
}

fn used(m: &CpuMeter) -> Result<f64> {
    m.used_us()
        .map_err(|e| Fail::run(format!("reading the CPU time of a measured process: {e}")))
}

/// Starts CPU meters for the server (if known), its bus and this process.
pub fn start_cpu(common: &Common) -> Result<Meters> {
    Ok(Meters {
        servers: common
            .server_pids
            .iter()
            .map(|pid| meter(pid))
            .collect::<Result<_>>()?,
        bus: common.bus_pid.as_deref().map(meter).transpose()?,
        own: meter("self")?,
    })
}

/// CPU time used since [`start_cpu`].
pub fn stop_cpu(meters: &Meters) -> Result<Used> {
    let server_us = if meters.servers.is_empty() {
        None
    } else {
        let mut sum = 0.0;
        for m in &meters.servers {
            sum += used(m)?;
        }
        Some(sum)
    };
    Ok(Used {
        server_us,
        bus_us: meters.bus.as_ref().map(used).transpose()?,
        own_us: used(&meters.own)?,
    })
}

/// CPU figures of a measured stretch.
pub struct Figures {
    pub used: Used,
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
        match self.used.server_us {
            Some(us) => println!(
                "  server CPU:  {:.1} % of a core, {:.3} us per {unit} (clock-tick resolution)",
                Self::share(us, self.elapsed),
                us / self.work.max(1) as f64
            ),
            None => println!("  server CPU:  not measured (no --server-pid)"),
        }
        if let Some(us) = self.used.bus_us {
            println!(
                "  bus CPU:     {:.1} % of a core, {:.3} us per {unit}",
                Self::share(us, self.elapsed),
                us / self.work.max(1) as f64
            );
        }
        println!(
            "  loadgen CPU: {:.1} % of a core",
            Self::share(self.used.own_us, self.elapsed)
        );
    }

    pub fn add_json(&self, json: Json, unit: &str) -> Json {
        let per_unit = |us: Option<f64>| us.map(|us| us / self.work.max(1) as f64);
        let share = |us: Option<f64>| us.map(|us| Self::share(us, self.elapsed));
        json.opt_num("server_cpu_pct", share(self.used.server_us), 1)
            .opt_num(
                &format!("server_cpu_us_per_{unit}"),
                per_unit(self.used.server_us),
                4,
            )
            .opt_num("bus_cpu_pct", share(self.used.bus_us), 1)
            .opt_num(
                &format!("bus_cpu_us_per_{unit}"),
                per_unit(self.used.bus_us),
                4,
            )
            .num(
                "loadgen_cpu_pct",
                Self::share(self.used.own_us, self.elapsed),
                1,
            )
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
