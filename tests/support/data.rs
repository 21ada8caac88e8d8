//! What the tests send and how they wait: the one seeded generator, the
//! deterministic payloads built from it or from a formula, polling with a
//! deadline, and timing.
//!
//! Nothing here touches a socket; nothing here may depend on the clock for
//! its values, so every run sends the same bytes.

use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*): the same numbers on every
/// run for the same seed. Not for anything that needs real randomness.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A deterministic payload of `len` bytes covering every byte value.
pub fn binary_payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// A deterministic valid UTF-8 text of exactly `len` bytes, mixing 1-, 2-,
/// 3- and 4-byte characters (padded with ASCII at the end).
pub fn text_payload(len: usize) -> String {
    const CHARS: [char; 6] = ['a', 'é', '€', '𝄞', 'Z', '0'];
    let mut out = String::with_capacity(len);
    let mut i = 0;
    loop {
        let c = CHARS[i % CHARS.len()];
        if out.len() + c.len_utf8() > len {
            break;
        }
        out.push(c);
        i += 1;
    }
    while out.len() < len {
        out.push('.');
    }
    out
}

/// Runs `f` and returns how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// Polls `check` every few milliseconds until it returns true or `timeout`
/// passes; returns whether it succeeded.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
