//! What the loop keeps per connection: the sans-IO [`Connection`] next to
//! its transport and the loop's bookkeeping for it (quinn's `ConnectionMeta`
//! is the model), and the poll tokens that name a slot.
//!
//! Owns: the slab entry layout, how a token packs slab key and slot
//! generation, and the tokens reserved for the loop itself.
//! Must never: interpret protocol bytes or decide policy; it is plain data
//! that the loop, the fan-out and the lifecycle code act on.

use mio::Token;

use super::conn::Connection;
use super::per_ip::IpSlot;
use crate::timer::TimerKey;

/// One slab entry. `T` is the byte transport ([`super::transport::Transport`]
/// in the loop, an in-memory sink in tests); nothing but the loop's I/O code
/// touches it.
#[derive(Debug)]
pub(super) struct Slot<T> {
    pub io: T,
    pub conn: Connection,
    /// The per-address count this connection holds, if that limit is on.
    pub ip_slot: Option<IpSlot>,
    /// The single timer wheel entry of this connection, if any deadline applies.
    pub timer: Option<TimerKey>,
    /// Generation of the slab slot, part of the poll token, so a late event
    /// for a closed connection never reaches one that reuses the slot.
    pub generation: u32,
    /// The last broadcast delivered, so a message relayed to several channels
    /// reaches a subscriber of more than one of them only once.
    pub delivery_stamp: u32,
    /// WRITABLE interest is registered with the poller.
    pub write_interest: bool,
    /// Listed for a flush at the end of the loop turn.
    pub dirty: bool,
    /// A recovery of this connection waits for Redis (cluster node): the
    /// live messages of its channel are held back until it is answered
    /// (which channels: the cluster's holds; looked up only when set).
    pub held: bool,
}

impl<T> Slot<T> {
    pub(super) fn new(
        io: T,
        conn: Connection,
        generation: u32,
        ip_slot: Option<IpSlot>,
    ) -> Slot<T> {
        Slot {
            io,
            conn,
            ip_slot,
            timer: None,
            generation,
            delivery_stamp: 0,
            write_interest: false,
            dirty: false,
            held: false,
        }
    }

    /// The poll token of this slot at slab key `key`.
    pub(super) fn token(&self, key: usize) -> Token {
        token_of(key, self.generation)
    }
}

// A token is a slab key in the low half and the slot's 32-bit generation in
// the high half; on a 32-bit target generations past 2^16 would stop
// matching, so such targets are refused outright.
const _: () = assert!(
    usize::BITS >= 64,
    "tokens pack a 32-bit generation above the slab key: 64-bit targets only"
);

/// Bits of a token holding the slab key; the bits above hold the slot's generation.
pub(super) const KEY_BITS: u32 = usize::BITS / 2;
pub(super) const KEY_MASK: usize = (1 << KEY_BITS) - 1;

/// Tokens of the loop itself, at the top of the token space: the waker, the
/// signal pipe, and the loop's own timer-wheel entries. (Listeners are
/// `Token(0..n)`: generation 0, which connections never get.)
pub(super) const WAKER_TOKEN: Token = Token(usize::MAX);
pub(super) const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
pub(super) const WATCHDOG_TIMER: Token = Token(usize::MAX - 2);
pub(super) const STATUS_TIMER: Token = Token(usize::MAX - 3);
pub(super) const SHUTDOWN_TIMER: Token = Token(usize::MAX - 4);
/// The cluster's two Redis sockets and its timer-wheel entry.
pub(super) const BUS_COMMAND_TOKEN: Token = Token(usize::MAX - 5);
pub(super) const BUS_SUBSCRIPTION_TOKEN: Token = Token(usize::MAX - 6);
pub(super) const BUS_TIMER: Token = Token(usize::MAX - 7);
/// The history's one timer-wheel entry (the next message to expire).
pub(super) const HISTORY_TIMER: Token = Token(usize::MAX - 8);
/// An upgrade in progress: the channel to the new process, and how long it
/// may take to say hello.
pub(super) const HANDOVER_TOKEN: Token = Token(usize::MAX - 9);
pub(super) const HANDOVER_TIMER: Token = Token(usize::MAX - 10);
/// Slab keys from here up are never given to connections, so no connection
/// token can equal a reserved one, whatever its generation.
pub(super) const FIRST_RESERVED_KEY: usize = KEY_MASK - 10;

/// The token for slab key `key` holding generation `generation`.
pub(super) fn token_of(key: usize, generation: u32) -> Token {
    Token(((generation as usize) << KEY_BITS) | key)
}

/// The slab key and generation a token names.
pub(super) fn split_token(token: Token) -> (usize, u32) {
    let generation = u32::try_from(token.0 >> KEY_BITS).unwrap_or(0);
    (token.0 & KEY_MASK, generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::transport::Transport;

    #[test]
    fn tokens_round_trip_every_generation() {
        for generation in [1, 2, 0xFFFF, 0x1_0000, 0x1234_5678, u32::MAX] {
            for key in [0, 1, 65_535, 1 << 20] {
                assert_eq!(split_token(token_of(key, generation)), (key, generation));
            }
        }
    }

    #[test]
    fn reserved_tokens_are_out_of_reach_of_connections() {
        let reserved = [
            WAKER_TOKEN,
            SIGNAL_TOKEN,
            WATCHDOG_TIMER,
            STATUS_TIMER,
            SHUTDOWN_TIMER,
            BUS_COMMAND_TOKEN,
            BUS_SUBSCRIPTION_TOKEN,
            BUS_TIMER,
            HISTORY_TIMER,
            HANDOVER_TOKEN,
            HANDOVER_TIMER,
        ];
        for token in reserved {
            assert!(split_token(token).0 >= FIRST_RESERVED_KEY, "{token:?}");
        }
    }

    /// Every connection, idle or not, costs a slab entry; the idle memory
    /// target (≤ 256 bytes of RSS per subscriber, measured by the benchmark,
    /// with a timer-wheel entry of 32 bytes, token auth and the kernel's
    /// socket outside the process) leaves room for little more than this.
    /// The entry holds the transport (16 B), the `Connection` (104 B: its
    /// outbound queue, memberships, phase and deadlines' times, token
    /// state, and a 16-byte receiver that boxes a frame's state only while
    /// one is incomplete) and the loop's bookkeeping (timer key, slot
    /// generation, delivery stamp, per-address slot, two flags). History:
    /// 176 B before the connection was split from its slot, 184 B after
    /// token auth added 8, 136 B once the receiver stopped carrying a
    /// frame's state between frames, 144 B when the outbound queue began
    /// to list broadcast frames instead of keeping a queue for them (an
    /// 8-byte state for where its entries are; no allocation survives a
    /// delivery now).
    #[test]
    fn slab_entry_stays_small() {
        let size = size_of::<Slot<Transport>>();
        eprintln!(
            "slab entry {size} B (connection {}, transport {})",
            size_of::<Connection>(),
            size_of::<Transport>(),
        );
        // 8 bytes less in release builds, where mio keeps no selector id per socket.
        assert!(size <= 144, "a slab entry grew to {size} bytes");
    }
}
