//! Measurement helpers: a latency histogram, process figures from `/proc`,
//! a tiny random generator and the JSON summary line.

use std::fmt::Write as _;
use std::fs;
use std::io;

/// Sub-buckets per power of two: values are kept within 1/64 (1.6 %).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are kept exactly.
const EXACT: u64 = 2 * SUB;
const BUCKETS: usize = (EXACT + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// A log-linear histogram of nanosecond values with a fixed footprint, so
/// recording on the hot path never allocates.
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.sum = 0;
        self.max = 0;
    }

    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / u128::from(self.count)) as u64
        }
    }

    /// The value at quantile `q` (0..=1), as the middle of its bucket and
    /// never above the largest value seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS; // >= 1
    let top = v >> shift; // in [SUB, 2 * SUB)
    (EXACT + u64::from(shift - 1) * SUB + (top - SUB)) as usize
}

/// Lowest value of bucket `i` and how many values it spans.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, 1);
    }
    let shift = (i - EXACT) / SUB + 1;
    let top = (i - EXACT) % SUB + SUB;
    (top << shift, 1 << shift)
}

/// CPU time (user + system) a process has used, in clock ticks.
pub fn cpu_ticks(pid: &str) -> io::Result<u64> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

fn parse_cpu_ticks(stat: &str) -> io::Result<u64> {
    // The command name (field 2) may hold spaces and parentheses, so count
    // fields from the last ')'. utime and stime are fields 14 and 15.
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat format");
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let stime: u64 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    Ok(utime + stime)
}

/// Clock ticks per second, the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// A process's resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: &str) -> io::Result<u64> {
    parse_rss(&fs::read_to_string(format!("/proc/{pid}/status"))?)
}

fn parse_rss(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// CPU used by a process over a stretch of time, as a share of one core
/// and per unit of work.
pub struct CpuMeter {
    pid: String,
    start: u64,
}

impl CpuMeter {
    pub fn start(pid: &str) -> io::Result<CpuMeter> {
        Ok(CpuMeter {
            pid: pid.to_owned(),
            start: cpu_ticks(pid)?,
        })
    }

    /// Microseconds of CPU since `start`.
    pub fn used_us(&self) -> io::Result<f64> {
        let ticks = cpu_ticks(&self.pid)?.saturating_sub(self.start);
        Ok(ticks as f64 * 1e6 / ticks_per_second() as f64)
    }
}

/// xorshift64*: cheap, good enough for mask keys and handshake nonces,
/// which only have to vary, not be secret, on a loopback benchmark.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    pub fn nonce(&mut self) -> [u8; 16] {
        let mut n = [0; 16];
        n[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        n[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        n
    }
}

/// Builds the one-line JSON object printed last.
pub struct Json {
    text: String,
}

impl Json {
    pub fn new() -> Json {
        Json {
            text: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        let _ = write!(self.text, "\"{key}\":");
    }

    pub fn str(mut self, key: &str, value: &str) -> Json {
        self.key(key);
        self.text.push('"');
        for c in value.chars() {
            match c {
                '"' => self.text.push_str("\\\""),
                '\\' => self.text.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.text, "\\u{:04x}", c as u32);
                }
                c => self.text.push(c),
            }
        }
        self.text.push('"');
        self
    }

    pub fn int(mut self, key: &str, value: u64) -> Json {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    /// A float with `decimals` places; non-finite values become `null`.
    pub fn num(mut self, key: &str, value: f64, decimals: usize) -> Json {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.text, "{value:.decimals$}");
        } else {
            self.text.push_str("null");
        }
        self
    }

    pub fn opt_num(self, key: &str, value: Option<f64>, decimals: usize) -> Json {
        match value {
            Some(v) => self.num(key, v, decimals),
            None => self.null(key),
        }
    }

    pub fn null(mut self, key: &str) -> Json {
        self.key(key);
        self.text.push_str("null");
        self
    }

    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev_end = 0;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, prev_end, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + (width - 1)), i);
            assert!(width == 1 || width * SUB <= low, "bucket {i} too wide");
            prev_end = low.wrapping_add(width);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.count(), 1000);
        h.clear();
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 281);
        let status = "Name:\twshub\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_rss(status).unwrap(), 4321 * 1024);
        assert!(parse_rss("Name: x\n").is_err());
    }

    #[test]
    fn json_line() {
        let j = Json::new()
            .str("a", "x\"y")
            .int("b", 3)
            .num("c", 1.23456, 2)
            .num("d", f64::NAN, 1)
            .opt_num("e", None, 1)
            .finish();
        assert_eq!(j, r#"{"a":"x\"y","b":3,"c":1.23,"d":null,"e":null}"#);
    }
}
