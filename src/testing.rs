//! What the crate's unit tests share: a small seeded random generator for
//! randomized tests against brute-force models, and positions written
//! shortly.
//!
//! Owns: nothing the daemon runs; compiled for tests only.
//! Must never: be used outside `#[cfg(test)]` code.

/// Xorshift64: seeded, so a failing randomized test reproduces.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// An index in `0..len`; `len` must not be 0.
    pub(crate) fn index(&mut self, len: usize) -> usize {
        (self.next() % len as u64) as usize
    }
}

/// The position at `offset` in the epoch numbered `epoch`.
pub(crate) fn at(epoch: u64, offset: u64) -> crate::hub::position::Position {
    crate::hub::position::Position {
        epoch: crate::hub::position::Epoch::new(epoch),
        offset,
    }
}
