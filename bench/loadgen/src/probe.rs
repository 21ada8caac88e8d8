//! The echo probe of `broadcast --echo-url`: one more client, on the
//! server's echo route, doing back-to-back round trips (one message in
//! flight) while the broadcast runs, so the report shows how long a big
//! fan-out keeps the server from answering anyone else.
//!
//! Owns: the probe's connection, its message sequence and its round-trip
//! histogram. Must never: have more than one message in flight (a round
//! trip is timed from its send to its echo), or keep sending once stopped.
//!
//! Payload: bytes 0..8 the probe's sequence number (little-endian), then a
//! fixed byte pattern; every echo is checked for opcode, length, order and
//! content.

use std::time::Instant;

use crate::conn::WsConn;
use crate::error::{Fail, Result};
use crate::stats::{Histogram, Rng};
use crate::wire::{self, OutBuf};

pub struct EchoProbe {
    pub conn: WsConn,
    pattern: Box<[u8]>,
    /// Sequence number of the message in flight (or the next to send).
    seq: u64,
    /// When the message in flight was sent, on the run's clock (ns).
    sent_at: u64,
    in_flight: bool,
    /// Sends a new message on every echo while true.
    running: bool,
    /// Every round trip completed (all were started while running).
    pub hist: Histogram,
}

impl EchoProbe {
    pub fn new(conn: WsConn, size: usize) -> EchoProbe {
        EchoProbe {
            conn,
            pattern: (0..size)
                .map(|j| (j.wrapping_mul(13) ^ 0xa5) as u8)
                .collect(),
            seq: 0,
            sent_at: 0,
            in_flight: false,
            running: false,
            hist: Histogram::new(),
        }
    }

    /// Starts the round trips: sends the first message at `now` (ns).
    pub fn start(&mut self, now: u64, rng: &mut Rng) -> Result<()> {
        self.running = true;
        if !self.in_flight {
            send(
                &mut self.conn.out,
                &self.pattern,
                self.seq,
                rng,
                &mut self.in_flight,
            );
            self.sent_at = now;
        }
        self.conn.flush()
    }

    /// Stops sending; an echo still on its way is still timed when it
    /// arrives (see [`EchoProbe::in_flight`]).
    pub fn stop(&mut self) {
        self.running = false;
    }

    /// True while a message waits for its echo.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Reads what the connection has: each echo is checked and timed, and
    /// while running the next message goes out at once. `clock` is the run's
    /// time zero.
    pub fn pump(
        &mut self,
        scratch: &mut [u8],
        hung_up: bool,
        clock: Instant,
        rng: &mut Rng,
    ) -> Result<()> {
        let EchoProbe {
            conn,
            pattern,
            seq,
            sent_at,
            in_flight,
            running,
            hist,
        } = self;
        conn.read(scratch, pattern.len(), hung_up, |out, opcode, payload| {
            let now = clock.elapsed().as_nanos() as u64;
            check_echo(pattern, *seq, *in_flight, opcode, payload)?;
            *in_flight = false;
            *seq += 1;
            hist.record(now.saturating_sub(*sent_at));
            if *running {
                send(out, pattern, *seq, rng, in_flight);
                *sent_at = clock.elapsed().as_nanos() as u64;
            }
            Ok(())
        })?;
        conn.flush()
    }
}

fn send(out: &mut OutBuf, pattern: &[u8], seq: u64, rng: &mut Rng, in_flight: &mut bool) {
    wire::encode_masked(
        out,
        wire::OP_BINARY,
        rng.mask(),
        &[&seq.to_le_bytes(), &pattern[8..]],
    );
    *in_flight = true;
}

/// Checks one echo against the message in flight.
fn check_echo(pattern: &[u8], seq: u64, in_flight: bool, opcode: u8, payload: &[u8]) -> Result<()> {
    if !in_flight {
        return Err(Fail::run(
            "echo probe: an echo arrived with nothing in flight",
        ));
    }
    if opcode != wire::OP_BINARY {
        return Err(Fail::run(format!(
            "echo probe: sent a binary message, the echo has opcode {opcode:#x}"
        )));
    }
    if payload.len() != pattern.len() {
        return Err(Fail::run(format!(
            "echo probe: echo of {} bytes, sent {}",
            payload.len(),
            pattern.len()
        )));
    }
    let got = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    if got != seq {
        return Err(Fail::run(format!(
            "echo probe: expected the echo of message {seq}, got {got}"
        )));
    }
    if payload[8..] != pattern[8..] {
        return Err(Fail::run(format!(
            "echo probe: echo of message {seq} differs from what was sent"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(pattern: &[u8], seq: u64) -> Vec<u8> {
        let mut p = pattern.to_vec();
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p
    }

    #[test]
    fn echoes_are_checked() {
        let pattern: Vec<u8> = (0..64).map(|j| j as u8).collect();
        let ok = message(&pattern, 3);
        assert!(check_echo(&pattern, 3, true, wire::OP_BINARY, &ok).is_ok());
        assert!(check_echo(&pattern, 3, false, wire::OP_BINARY, &ok).is_err());
        assert!(check_echo(&pattern, 4, true, wire::OP_BINARY, &ok).is_err());
        assert!(check_echo(&pattern, 3, true, wire::OP_TEXT, &ok).is_err());
        assert!(check_echo(&pattern, 3, true, wire::OP_BINARY, &ok[..63]).is_err());
        let mut bad = ok.clone();
        bad[63] ^= 1;
        assert!(check_echo(&pattern, 3, true, wire::OP_BINARY, &bad).is_err());
    }

    #[test]
    fn one_message_in_flight() {
        let pattern: Vec<u8> = (0..16).collect();
        let mut out = OutBuf::with_capacity(64);
        let mut rng = Rng::seeded();
        let mut in_flight = false;
        send(&mut out, &pattern, 0, &mut rng, &mut in_flight);
        assert!(in_flight);
        // 2-byte header, 4-byte mask, 16 bytes of payload.
        assert_eq!(out.pending().len(), 2 + 4 + 16);
        assert_eq!(out.pending()[0], 0x80 | wire::OP_BINARY);
    }
}
