//! Channel history in Redis, sans-IO: the scripts that give each message
//! its position and keep the stream, the read that recovery and gap
//! filling share, its reply, what a recovery is told, and the coalescing of
//! concurrent recovery reads.
//!
//! Owns: the Redis keys of a channel's history, the two Lua scripts
//! ([`PUBLISH_HISTORY_SCRIPT`], [`READ_SCRIPT`]), parsing their replies,
//! the recovery decision ([`decide`]) and the [`Coalescer`] of recovery
//! requests.
//! Must never: do I/O or read a clock (`now` comes in), trust a byte of a
//! reply (anyone with access to Redis can write these keys), or hand a
//! client a partial replay as if it were whole.
//!
//! # In Redis, per channel (with `key_prefix` P)
//!
//! - `P meta:<channel>`, a hash: `e` the epoch (16 hex digits), `o` the
//!   last offset. Set by the first publish or read after it was absent (a
//!   new channel, or a Redis that lost its data: the epoch is a new random
//!   candidate from the node, so clients learn continuity broke). Expires
//!   `history_meta_ttl` after the last publish: longer than the stream, so
//!   a client that is up to date on a quiet channel can still continue.
//! - `P history:<channel>`, a stream of the envelopes (version 2, position
//!   inside), with ids `<offset>-0` (so a range by offset is direct) and a
//!   field `t` holding Redis's clock at publish. Trimmed to `history_size`
//!   entries exactly; expires `history_ttl` after the last publish, and an
//!   entry older than `history_ttl` counts as expired when read.
//!
//! # The read
//!
//! One script call returns atomically the channel's current position, the
//! time in Redis and up to `count` entries after an offset. A recovery
//! gets from it either every message after the client's position up to the
//! read's top, or an explicit refusal with the current position; the node
//! serves what comes after the top from its live feed (see the bus's
//! module doc for the seam).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use redis_protocol::resp2::types::OwnedFrame;

use super::envelope::{Envelope, POSITION_AT};
use crate::hub::position::{Epoch, Position};

/// The publish script with history: `KEYS[1]` the meta hash, `KEYS[2]`
/// the stream; `ARGV[1]` the deadline in Redis's clock (ms), `ARGV[2]` the
/// Redis channel, `ARGV[3]` the envelope without its position, `ARGV[4]`
/// an epoch candidate, `ARGV[5]` `history_size`, `ARGV[6]` `history_ttl`
/// (ms), `ARGV[7]` `history_meta_ttl` (ms). Returns -1 when the deadline
/// has passed (nothing written), else `{nodes reached, epoch, offset}`.
pub(crate) const PUBLISH_HISTORY_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return -1 end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local head = string.sub(ARGV[3], 1, 10)
local tail = string.sub(ARGV[3], 11)
local envelope = head .. epoch .. string.format('%020d', offset) .. tail
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], string.format('%d-0', offset),
  't', string.format('%d', now), 'd', envelope)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local nodes = redis.call('PUBLISH', ARGV[2], envelope)
return {nodes, epoch, offset}
";

/// The read script: `KEYS` as for the publish; `ARGV[1]` the offset to
/// read after, `ARGV[2]` how many entries at most, `ARGV[3]` an epoch
/// candidate, `ARGV[4]` `history_meta_ttl` (ms). Returns `{epoch, last
/// offset, Redis time (ms), entries}`; a channel without meta gets one
/// (the candidate, offset 0), so the current position is always known.
pub(crate) const READ_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {epoch, 0, now, {}}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or 0)
local from = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local entries = {}
if count > 0 and from < top then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from + 1), '+',
    'COUNT', count)
end
return {epoch, top, now, entries}
";

/// The Redis keys of `channel`'s history: (meta hash, stream).
pub(crate) fn keys(prefix: &str, channel: &str) -> (String, String) {
    (
        format!("{prefix}meta:{channel}"),
        format!("{prefix}history:{channel}"),
    )
}

/// What the publish script answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishReply {
    /// Published: Redis subscribers (nodes) reached, and the position.
    Published { nodes: u64, position: Position },
    /// The deadline had passed in Redis: nothing was written.
    TooLate,
}

fn integer(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(n) => Some(*n),
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            std::str::from_utf8(b).ok()?.parse().ok()
        }
        _ => None,
    }
}

fn epoch(frame: &OwnedFrame) -> Option<Epoch> {
    match frame {
        OwnedFrame::BulkString(b) => Epoch::parse(std::str::from_utf8(b).ok()?),
        _ => None,
    }
}

/// Parses the publish script's reply.
pub(crate) fn parse_publish_reply(frame: &OwnedFrame) -> Option<PublishReply> {
    match frame {
        OwnedFrame::Integer(-1) => Some(PublishReply::TooLate),
        OwnedFrame::Array(parts) => match parts.as_slice() {
            [nodes, e, offset] => Some(PublishReply::Published {
                nodes: u64::try_from(integer(nodes)?).ok()?,
                position: Position {
                    epoch: epoch(e)?,
                    offset: u64::try_from(integer(offset)?).ok()?,
                },
            }),
            _ => None,
        },
        _ => None,
    }
}

/// One message read from a channel's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub position: Position,
    /// Redis's clock when it was published (ms since the epoch).
    pub time_ms: u64,
    /// A binary message (else text).
    pub binary: bool,
    /// The whole envelope as stored (version 2).
    pub envelope: Vec<u8>,
    /// Where the payload starts in `envelope`.
    payload_at: usize,
}

impl Entry {
    /// An entry as a read would return it (tests elsewhere in the crate).
    #[cfg(test)]
    pub(crate) fn new(position: Position, binary: bool, payload: &[u8]) -> Entry {
        let mut envelope = Vec::new();
        Envelope {
            binary,
            origin: 1,
            position: Some(position),
            exclude: None,
            payload,
        }
        .write(&mut envelope);
        Entry {
            position,
            time_ms: 0,
            binary,
            payload_at: envelope.len() - payload.len(),
            envelope,
        }
    }

    /// The message's payload.
    pub(crate) fn payload(&self) -> &[u8] {
        self.envelope.get(self.payload_at..).unwrap_or_default()
    }
}

/// The read script's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadReply {
    /// The channel's position when the read ran: its top.
    pub current: Position,
    /// Redis's clock then (ms since the epoch).
    pub now_ms: u64,
    /// Entries after the read's offset, in offset order, each of the
    /// current epoch with a valid envelope (others are left out, which
    /// shows as a hole).
    pub entries: Vec<Entry>,
}

/// Parses one stream entry `[id, [field, value, ...]]`; `None` for
/// anything that is not a well-formed entry of `epoch`.
fn parse_entry(frame: OwnedFrame, epoch: Epoch) -> Option<Entry> {
    let OwnedFrame::Array(mut parts) = frame else {
        return None;
    };
    let (Some(OwnedFrame::Array(fields)), Some(OwnedFrame::BulkString(id))) =
        (parts.pop(), parts.pop())
    else {
        return None;
    };
    let id = std::str::from_utf8(&id).ok()?;
    let offset = id.strip_suffix("-0")?.parse::<u64>().ok()?;
    let mut time_ms = None;
    let mut envelope = None;
    let mut fields = fields.into_iter();
    while let (Some(OwnedFrame::BulkString(k)), Some(OwnedFrame::BulkString(v))) =
        (fields.next(), fields.next())
    {
        match k.as_slice() {
            b"t" => time_ms = std::str::from_utf8(&v).ok()?.parse::<u64>().ok(),
            b"d" => envelope = Some(v),
            _ => {}
        }
    }
    let envelope = envelope?;
    let parsed = Envelope::parse(&envelope).ok()?;
    let position = Position { epoch, offset };
    if parsed.position != Some(position) {
        return None;
    }
    let binary = parsed.binary;
    let payload_at = envelope.len() - parsed.payload.len();
    debug_assert!(payload_at > POSITION_AT);
    Some(Entry {
        position,
        time_ms: time_ms?,
        binary,
        envelope,
        payload_at,
    })
}

/// Parses the read script's reply; `None` when it is not one.
pub(crate) fn parse_read_reply(frame: OwnedFrame) -> Option<ReadReply> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(e), Some(top), Some(now), Some(OwnedFrame::Array(raw))) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let current = Position {
        epoch: epoch(&e)?,
        offset: u64::try_from(integer(&top)?).ok()?,
    };
    let now_ms = u64::try_from(integer(&now)?).ok()?;
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    for frame in raw {
        if let Some(entry) = parse_entry(frame, current.epoch)
            && entries
                .last()
                .is_none_or(|l| l.position.offset < entry.position.offset)
            && entry.position.offset <= current.offset
        {
            entries.push(entry);
        }
    }
    Some(ReadReply {
        current,
        now_ms,
        entries,
    })
}

/// Why a recovery could not give every message after a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The channel's epoch is not the client's (its history broke, or the
    /// position is from elsewhere): messages may have been missed.
    Epoch,
    /// Messages after the position were trimmed (`history_size`).
    Evicted,
    /// Messages after the position are older than `history_ttl`.
    Expired,
    /// More messages than the route's `max_replay` came after it.
    TooMany,
    /// Redis could not be asked in time; the current position is unknown.
    Unavailable,
}

impl Reason {
    /// As clients and `/metrics` see it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Epoch => "epoch",
            Reason::Evicted => "evicted",
            Reason::Expired => "expired",
            Reason::TooMany => "too_many",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// The messages a recovery replays: a range of entries shared by every
/// recovery served by the same read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replay {
    entries: Arc<[Entry]>,
    range: std::ops::Range<usize>,
}

impl Replay {
    /// The messages after the client's position up to the read's top, in
    /// order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> &[Entry] {
        self.entries.get(self.range.clone()).unwrap_or_default()
    }

    /// The read's entries, shared by every recovery it served, and where
    /// this one's lie among them: to convert a read's entries once, however
    /// many recoveries it serves.
    pub(crate) fn shared(&self) -> (&Arc<[Entry]>, std::ops::Range<usize>) {
        (&self.entries, self.range.clone())
    }
}

/// What a recovery is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Every message after the client's position up to `top`; what comes
    /// after `top` arrives on the live feed.
    Recovered { top: Position, replay: Replay },
    /// Not recovered, and why; `current` is the channel's position (unknown
    /// only when Redis was unavailable).
    NotRecovered {
        reason: Reason,
        current: Option<Position>,
    },
}

/// What one client asks: the messages after `position`, at most
/// `max_replay` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ask {
    pub position: Position,
    pub max_replay: usize,
}

/// The recovery `ask` gets from a read (`entries` is the reply's, shared);
/// `ttl_ms` is `history_ttl`.
pub(crate) fn decide(ask: Ask, reply: &ReadReply, entries: &Arc<[Entry]>, ttl_ms: u64) -> Recovery {
    let current = reply.current;
    let refuse = |reason| Recovery::NotRecovered {
        reason,
        current: Some(current),
    };
    let from = ask.position.offset;
    if ask.position.epoch != current.epoch || from > current.offset {
        return refuse(Reason::Epoch);
    }
    let missed = current.offset - from;
    if missed > u64::try_from(ask.max_replay).unwrap_or(u64::MAX) {
        return refuse(Reason::TooMany);
    }
    if missed == 0 {
        return Recovery::Recovered {
            top: current,
            replay: Replay {
                entries: Arc::clone(entries),
                range: 0..0,
            },
        };
    }
    let Some(first) = entries.first() else {
        // The stream is gone while the meta is kept: it expired.
        return refuse(Reason::Expired);
    };
    if first.position.offset > from + 1 {
        return refuse(Reason::Evicted);
    }
    let start = usize::try_from(from + 1 - first.position.offset).unwrap_or(usize::MAX);
    let len = usize::try_from(missed).unwrap_or(usize::MAX);
    let range = start..start.saturating_add(len);
    let Some(wanted) = entries.get(range.clone()) else {
        // A hole (an entry left out) or a short read.
        return refuse(Reason::Evicted);
    };
    let whole = wanted
        .iter()
        .zip(from + 1..)
        .all(|(e, offset)| e.position.offset == offset);
    if !whole {
        return refuse(Reason::Evicted);
    }
    if wanted
        .first()
        .is_some_and(|e| e.time_ms.saturating_add(ttl_ms) < reply.now_ms)
    {
        return refuse(Reason::Expired);
    }
    Recovery::Recovered {
        top: current,
        replay: Replay {
            entries: Arc::clone(entries),
            range,
        },
    }
}

/// Recovery reads out at Redis at once, across channels; more wait (and
/// coalesce) in their channel's queue.
pub(crate) const MAX_READS_IN_FLIGHT: usize = 16;

/// One queued recovery request.
#[derive(Debug)]
pub(crate) struct Want<R> {
    pub who: R,
    pub ask: Ask,
    /// When it is answered `unavailable` if no read has answered it.
    pub deadline: u64,
}

/// One read to send, and the requests it serves.
#[derive(Debug)]
pub(crate) struct Group<R> {
    pub channel: String,
    /// Read the entries after this offset ...
    pub from: u64,
    /// ... at most this many.
    pub count: u64,
    pub wants: Vec<Want<R>>,
}

#[derive(Debug)]
struct Queue<R> {
    wants: Vec<Want<R>>,
    /// A read for this channel is out.
    reading: bool,
    /// In the ready list.
    ready: bool,
}

/// Recovery requests per channel, served by as few reads as possible: one
/// read out per channel, serving every request queued when it is sent
/// whose offset lies within one `max_replay` of the smallest (one read
/// from the smallest offset covers them all); at most
/// [`MAX_READS_IN_FLIGHT`] reads out in all. Requests wait for their
/// channel's subscription to be confirmed in Redis before any read.
#[derive(Debug)]
pub(crate) struct Coalescer<R> {
    queues: HashMap<String, Queue<R>>,
    /// Channels with requests, confirmed, and no read out.
    ready: VecDeque<String>,
    /// Deadlines of queued requests in arrival order (some may have been
    /// served since: then nothing is due at that time).
    deadlines: VecDeque<u64>,
    in_flight: usize,
}

impl<R> Default for Coalescer<R> {
    fn default() -> Coalescer<R> {
        Coalescer {
            queues: HashMap::new(),
            ready: VecDeque::new(),
            deadlines: VecDeque::new(),
            in_flight: 0,
        }
    }
}

impl<R> Coalescer<R> {
    /// Queues a request; `confirmed` says whether the channel's
    /// subscription is confirmed in Redis.
    pub(crate) fn add(&mut self, channel: &str, want: Want<R>, confirmed: bool) {
        self.deadlines.push_back(want.deadline);
        let queue = match self.queues.get_mut(channel) {
            Some(q) => q,
            None => self.queues.entry(channel.to_owned()).or_insert(Queue {
                wants: Vec::new(),
                reading: false,
                ready: false,
            }),
        };
        queue.wants.push(want);
        if confirmed && !queue.reading && !queue.ready {
            queue.ready = true;
            self.ready.push_back(channel.to_owned());
        }
    }

    /// `channel`'s subscription was confirmed in Redis.
    pub(crate) fn confirmed(&mut self, channel: &str) {
        if let Some(queue) = self.queues.get_mut(channel)
            && !queue.wants.is_empty()
            && !queue.reading
            && !queue.ready
        {
            queue.ready = true;
            self.ready.push_back(channel.to_owned());
        }
    }

    /// The next read to send, if one may go out now.
    pub(crate) fn next_group(&mut self) -> Option<Group<R>> {
        while self.in_flight < MAX_READS_IN_FLIGHT {
            let channel = self.ready.pop_front()?;
            let Some(queue) = self.queues.get_mut(&channel) else {
                continue;
            };
            queue.ready = false;
            if queue.wants.is_empty() {
                if !queue.reading {
                    self.queues.remove(&channel);
                }
                continue;
            }
            queue.wants.sort_by_key(|w| w.ask.position.offset);
            let from = queue.wants.first().map_or(0, |w| w.ask.position.offset);
            let window = queue
                .wants
                .first()
                .map_or(0, |w| u64::try_from(w.ask.max_replay).unwrap_or(u64::MAX));
            let split = queue
                .wants
                .partition_point(|w| w.ask.position.offset <= from.saturating_add(window));
            let wants: Vec<Want<R>> = queue.wants.drain(..split).collect();
            let last = wants.last().map_or(from, |w| w.ask.position.offset);
            let most = wants.iter().map(|w| w.ask.max_replay).max().unwrap_or(0);
            let count = (last - from)
                .saturating_add(u64::try_from(most).unwrap_or(u64::MAX))
                .saturating_add(1);
            queue.reading = true;
            self.in_flight += 1;
            return Some(Group {
                channel,
                from,
                count,
                wants,
            });
        }
        None
    }

    /// The read for `channel` was answered (or failed); `confirmed` says
    /// whether the channel is still confirmed, so what queued meanwhile can
    /// be read next.
    pub(crate) fn done(&mut self, channel: &str, confirmed: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(queue) = self.queues.get_mut(channel) else {
            return;
        };
        queue.reading = false;
        if queue.wants.is_empty() {
            self.queues.remove(channel);
        } else if confirmed && !queue.ready {
            queue.ready = true;
            self.ready.push_back(channel.to_owned());
        }
    }

    /// Takes out every queued request whose deadline has passed.
    pub(crate) fn expire(&mut self, now: u64, out: &mut Vec<Want<R>>) {
        if self.deadlines.front().is_none_or(|&d| d > now) {
            return;
        }
        while self.deadlines.front().is_some_and(|&d| d <= now) {
            self.deadlines.pop_front();
        }
        for queue in self.queues.values_mut() {
            let mut i = 0;
            while i < queue.wants.len() {
                if queue.wants[i].deadline <= now {
                    out.push(queue.wants.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.queues.retain(|_, q| !q.wants.is_empty() || q.reading);
    }

    /// When [`Coalescer::expire`] may have work.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.front().copied()
    }

    /// Requests queued (not yet in a read).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queues.values().map(|q| q.wants.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_ab() -> Epoch {
        Epoch::new(0xab)
    }

    fn at(offset: u64) -> Position {
        Position {
            epoch: epoch_ab(),
            offset,
        }
    }

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    fn envelope(offset: u64, payload: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Envelope {
            binary: false,
            origin: 1,
            position: Some(at(offset)),
            exclude: None,
            payload: payload.as_bytes(),
        }
        .write(&mut out);
        out
    }

    fn entry_frame(offset: u64, time: u64) -> OwnedFrame {
        OwnedFrame::Array(vec![
            bulk(&format!("{offset}-0")),
            OwnedFrame::Array(vec![
                bulk("t"),
                bulk(&time.to_string()),
                bulk("d"),
                OwnedFrame::BulkString(envelope(offset, &format!("m{offset}"))),
            ]),
        ])
    }

    fn reply(top: u64, now: u64, offsets: impl IntoIterator<Item = u64>) -> ReadReply {
        let entries = offsets.into_iter().map(|o| entry_frame(o, 1_000)).collect();
        parse_read_reply(OwnedFrame::Array(vec![
            bulk(&epoch_ab().to_string()),
            OwnedFrame::Integer(i64::try_from(top).unwrap()),
            OwnedFrame::Integer(i64::try_from(now).unwrap()),
            OwnedFrame::Array(entries),
        ]))
        .unwrap()
    }

    fn ask(offset: u64, max_replay: usize) -> Ask {
        Ask {
            position: at(offset),
            max_replay,
        }
    }

    fn run(a: Ask, r: &ReadReply) -> Recovery {
        let shared: Arc<[Entry]> = r.entries.clone().into();
        decide(a, r, &shared, 60_000)
    }

    fn refused(reason: Reason, top: u64) -> Recovery {
        Recovery::NotRecovered {
            reason,
            current: Some(at(top)),
        }
    }

    #[test]
    fn publish_replies_parse() {
        let ok = OwnedFrame::Array(vec![
            OwnedFrame::Integer(2),
            bulk("00000000000000ab"),
            OwnedFrame::Integer(7),
        ]);
        assert_eq!(
            parse_publish_reply(&ok),
            Some(PublishReply::Published {
                nodes: 2,
                position: at(7)
            })
        );
        assert_eq!(
            parse_publish_reply(&OwnedFrame::Integer(-1)),
            Some(PublishReply::TooLate)
        );
        for bad in [
            OwnedFrame::Integer(3),
            OwnedFrame::Array(vec![
                OwnedFrame::Integer(2),
                bulk("AB"),
                OwnedFrame::Integer(7),
            ]),
            OwnedFrame::Array(vec![
                OwnedFrame::Integer(-2),
                bulk("00000000000000ab"),
                OwnedFrame::Integer(7),
            ]),
            OwnedFrame::Array(vec![]),
        ] {
            assert_eq!(parse_publish_reply(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn read_replies_parse_and_leave_out_what_is_not_an_entry_of_the_epoch() {
        let r = reply(5, 2_000, [3, 4, 5]);
        assert_eq!(r.current, at(5));
        assert_eq!(r.now_ms, 2_000);
        let got: Vec<(u64, &[u8])> = r
            .entries
            .iter()
            .map(|e| (e.position.offset, e.payload()))
            .collect();
        assert_eq!(got, [(3, &b"m3"[..]), (4, b"m4"), (5, b"m5")]);
        // An entry whose envelope carries another position, a bad id, an
        // entry past the top, a repeat: all left out.
        let mut wrong = entry_frame(4, 1);
        if let OwnedFrame::Array(parts) = &mut wrong {
            parts[0] = bulk("9-0");
        }
        let r = parse_read_reply(OwnedFrame::Array(vec![
            bulk(&epoch_ab().to_string()),
            OwnedFrame::Integer(6),
            OwnedFrame::Integer(1),
            OwnedFrame::Array(vec![
                entry_frame(2, 1),
                wrong,
                OwnedFrame::Array(vec![bulk("x"), OwnedFrame::Array(vec![])]),
                entry_frame(2, 1),
                entry_frame(7, 1),
            ]),
        ]))
        .unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(parse_read_reply(OwnedFrame::Integer(1)), None);
        assert_eq!(
            parse_read_reply(OwnedFrame::Array(vec![bulk("zz"), OwnedFrame::Integer(0)])),
            None
        );
    }

    #[test]
    fn recovery_gives_exactly_what_came_after_or_says_why_not() {
        let r = reply(10, 2_000, 6..=10);
        let Recovery::Recovered { top, replay } = run(ask(7, 100), &r) else {
            panic!()
        };
        assert_eq!(top, at(10));
        let offsets: Vec<u64> = replay.entries().iter().map(|e| e.position.offset).collect();
        assert_eq!(offsets, [8, 9, 10]);
        // Up to date: nothing to replay.
        let Recovery::Recovered { replay, .. } = run(ask(10, 100), &r) else {
            panic!()
        };
        assert!(replay.entries().is_empty());
        assert_eq!(run(ask(7, 2), &r), refused(Reason::TooMany, 10));
        assert_eq!(run(ask(3, 100), &r), refused(Reason::Evicted, 10));
        assert_eq!(run(ask(11, 100), &r), refused(Reason::Epoch, 10));
        let other = Ask {
            position: Position {
                epoch: Epoch::new(1),
                offset: 7,
            },
            max_replay: 100,
        };
        assert_eq!(run(other, &r), refused(Reason::Epoch, 10));
        // The stream expired while the meta is kept.
        assert_eq!(
            run(ask(7, 100), &reply(10, 2_000, [])),
            refused(Reason::Expired, 10)
        );
        // Entries older than the TTL.
        assert_eq!(
            run(ask(7, 100), &reply(10, 70_000, 6..=10)),
            refused(Reason::Expired, 10)
        );
        // A hole in the middle.
        assert_eq!(
            run(ask(5, 100), &reply(10, 2_000, [6, 7, 9, 10])),
            refused(Reason::Evicted, 10)
        );
    }

    fn want(offset: u64, deadline: u64) -> Want<u64> {
        Want {
            who: offset,
            ask: ask(offset, 100),
            deadline,
        }
    }

    #[test]
    fn identical_requests_share_one_read_and_wait_for_confirmation() {
        let mut c = Coalescer::default();
        for _ in 0..5_000 {
            c.add("news", want(40, 1_000), false);
        }
        assert!(c.next_group().is_none(), "not confirmed yet");
        c.confirmed("news");
        let g = c.next_group().unwrap();
        assert_eq!(
            (g.channel.as_str(), g.from, g.wants.len()),
            ("news", 40, 5_000)
        );
        assert_eq!(g.count, 101);
        assert!(c.next_group().is_none());
        // Arriving while the read is out: queued for the next one.
        c.add("news", want(41, 1_000), true);
        c.add("news", want(45, 1_000), true);
        assert!(c.next_group().is_none());
        c.done("news", true);
        let g = c.next_group().unwrap();
        assert_eq!((g.from, g.count, g.wants.len()), (41, 105, 2));
        c.done("news", true);
        assert_eq!(c.queued(), 0);
        assert!(c.queues.is_empty());
    }

    #[test]
    fn far_apart_offsets_take_separate_reads_and_reads_out_are_bounded() {
        let mut c = Coalescer::default();
        c.add("a", want(10, 1_000), true);
        c.add("a", want(5_000, 1_000), true);
        let g = c.next_group().unwrap();
        assert_eq!((g.from, g.wants.len()), (10, 1));
        c.done("a", true);
        let g = c.next_group().unwrap();
        assert_eq!((g.from, g.wants.len()), (5_000, 1));
        c.done("a", true);
        for i in 0..(MAX_READS_IN_FLIGHT + 3) {
            c.add(&format!("ch{i}"), want(1, 1_000), true);
        }
        let mut out = 0;
        while c.next_group().is_some() {
            out += 1;
        }
        assert_eq!(out, MAX_READS_IN_FLIGHT);
        c.done("ch0", true);
        assert!(c.next_group().is_some());
    }

    #[test]
    fn queued_requests_expire_at_their_deadline() {
        let mut c = Coalescer::default();
        c.add("a", want(1, 100), false);
        c.add("b", want(2, 200), false);
        assert_eq!(c.next_deadline(), Some(100));
        let mut out = Vec::new();
        c.expire(99, &mut out);
        assert!(out.is_empty());
        c.expire(100, &mut out);
        assert_eq!(out.iter().map(|w| w.who).collect::<Vec<_>>(), [1]);
        assert_eq!(c.next_deadline(), Some(200));
        c.expire(250, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(c.queued(), 0);
    }
}
