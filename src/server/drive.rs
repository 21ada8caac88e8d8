//! Driving one connection: moving bytes between a slot's transport and its
//! sans-IO connection.
//!
//! Owns: a turn of one connection (read into the loop's shared buffer, hand
//! the bytes over, carry out the actions it asked for, write what it
//! produced in one vectored write, shut the write side when it asks),
//! keeping its poll interest and its one timer-wheel entry in step, and
//! removing it with everything it holds (timer, per-address count, hub
//! memberships, gauges, poller registration).
//! Must never: interpret the bytes (the connection does), decide policy
//! (fan-out and lifecycle do), or let one connection hold the loop for more
//! than a bounded number of reads and rounds.

use std::io;

use log::debug;
use mio::Interest;

use super::Server;
use super::conn::Ctx;
use super::outqueue::Flush;
use super::slot::Slot;
use super::transport::Transport;

/// Reads per connection per readiness event before others get their turn;
/// the connection is revisited on the next loop turn.
const READS_PER_TURN: usize = 16;
/// Rounds of "process held-back input, carry out its actions" per
/// connection per turn; bounds how long one pipelining client holds the
/// loop.
pub(super) const ROUNDS_PER_TURN: usize = 64;

impl Server {
    /// Reads what is available, lets the connection process it, carries out
    /// the actions it asks for, writes what it produced in one go, and
    /// settles poll interest and timer.
    pub(super) fn drive(&mut self, key: usize, readable: bool, read_to_end: bool, now: u64) {
        let mut read = readable;
        let mut again = false;
        let unix_ms = self.wall_ms;
        for _ in 0..ROUNDS_PER_TURN {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let mut ctx = Ctx {
                config: &self.config,
                routes: &self.routes,
                metrics: &mut self.metrics,
                actions: &mut self.actions,
                codec: &mut self.codec,
                inflater: &mut self.inflater,
                now,
                unix_ms,
                degraded: self.cluster.as_ref().and_then(|c| c.bus.health()),
            };
            if slot.conn.waits_for_answers() {
                // Resumed (and read) once an answer is in.
                read = false;
                break;
            }
            if slot.conn.has_pending_input() {
                if slot.conn.queued() > self.config.max_backlog_bytes {
                    // Resumed by the flush that drains the queue.
                    read = false;
                    break;
                }
                if slot.conn.resume(&mut ctx) {
                    // Reads were paused, so readiness edges may have been missed.
                    read = true;
                }
            } else if read {
                read = false;
                match read_input(slot, &mut self.recv_buf, &mut ctx, read_to_end) {
                    Ok(more) => again = more,
                    Err(e) => {
                        debug!("connection {key}: read failed: {e}");
                        self.remove(key);
                        return;
                    }
                }
            } else {
                break;
            }
            if !self.actions.is_empty() {
                self.run_actions(key, now);
            }
        }
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let token = slot.token(key);
        let Slot { io, conn, .. } = slot;
        if conn.queued() > 0 {
            match conn.flush(io) {
                Ok(Flush::Done | Flush::Blocked) => {}
                Err(e) => {
                    debug!("connection {key}: write failed: {e}");
                    self.remove(key);
                    return;
                }
            }
        } else if io.wants_write() {
            // TLS records (handshake, the tail of a write, close_notify)
            // with nothing queued behind them.
            if let Err(e) = io.flush_pending() {
                debug!("connection {key}: write failed: {e}");
                self.remove(key);
                return;
            }
        }
        if conn.poll_shutdown_write() {
            // Failure here means the peer is already gone; EOF or the close
            // timeout ends the connection either way.
            let _ = io.shutdown_write();
        }
        if conn.is_finished() && !io.wants_write() {
            self.remove(key);
            return;
        }
        if read
            || (conn.has_pending_input()
                && conn.queued() <= self.config.max_backlog_bytes
                && !conn.waits_for_answers())
        {
            again = true;
        }
        let want_write = conn.queued() > 0 || io.wants_write();
        if want_write != slot.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(slot.io.source(), token, interest)
            {
                debug!("connection {key}: reregister failed: {e}");
                self.remove(key);
                return;
            }
            slot.write_interest = want_write;
        }
        if again {
            self.ready.push_back(token);
        }
        self.sync_timer(key);
    }

    /// Keeps the connection's one wheel entry at or before its next deadline.
    /// Later deadlines are not chased: the entry fires early and re-arms.
    pub(super) fn sync_timer(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = slot.conn.next_deadline(&self.config);
        match (slot.timer, deadline) {
            (Some(timer), Some(at)) => {
                let current = self.timers.deadline(timer);
                if current.is_none_or(|c| at < c) && !self.timers.reschedule(timer, at) {
                    slot.timer = Some(self.timers.insert(at, slot.token(key)));
                }
            }
            (None, Some(at)) => {
                slot.timer = Some(self.timers.insert(at, slot.token(key)));
            }
            (Some(timer), None) => {
                self.timers.remove(timer);
                slot.timer = None;
            }
            (None, None) => {}
        }
    }

    /// Drops connection `key` and gives back all it holds: its wheel entry,
    /// per-address count, subscriptions, gauges and poller registration.
    pub(super) fn remove(&mut self, key: usize) {
        if let Some(mut slot) = self.conns.try_remove(key) {
            if slot.held {
                self.drop_holds(key);
            }
            if let Some(timer) = slot.timer {
                self.timers.remove(timer);
            }
            if let Some(ip_slot) = slot.ip_slot {
                self.per_ip.release(ip_slot);
            }
            let conn = &mut slot.conn;
            let memberships = conn.memberships.take();
            if !memberships.is_empty() {
                for membership in memberships.iter() {
                    if let Some(name) = self.hub.unsubscribe(membership)
                        && let Some(cluster) = self.cluster.as_deref_mut()
                    {
                        cluster.bus.channel_changed(&name);
                    }
                }
                self.update_hub_gauges();
            }
            self.metrics.connections = self.metrics.connections.saturating_sub(1);
            if let Some(open) = conn
                .counted_route()
                .and_then(|r| self.metrics.open_by_route.get_mut(usize::from(r.0)))
            {
                *open = open.saturating_sub(1);
            }
            let _ = self.poll.registry().deregister(slot.io.source());
            debug!("connection {key} closed");
        }
    }
}

/// Reads until the socket is drained or the turn's budget is spent, feeding
/// each read to the connection straight from the shared buffer.
/// Returns true when the budget ran out with input possibly left.
fn read_input(
    slot: &mut Slot<Transport>,
    buf: &mut [u8],
    ctx: &mut Ctx<'_>,
    read_to_end: bool,
) -> io::Result<bool> {
    let Slot { io, conn, .. } = slot;
    for _ in 0..READS_PER_TURN {
        if !conn.wants_read() {
            return Ok(false);
        }
        match io.read(buf) {
            Ok(0) => {
                conn.on_eof(ctx.now);
                return Ok(false);
            }
            Ok(n) => {
                let Some(input) = buf.get_mut(..n) else {
                    return Ok(false);
                };
                conn.on_input(input, ctx);
                // Stopping at a short read saves the read that would only
                // say WouldBlock, but it leans on Linux epoll semantics, not
                // on mio's documented contract ("read until WouldBlock"): on
                // Linux a short read from a TCP socket means its receive
                // queue is empty, and data arriving later raises a new edge.
                // On another platform this early return must go, or input
                // can stall until the peer sends again.
                if n < buf.len() && !read_to_end {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
