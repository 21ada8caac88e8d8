//! The server's counters and gauges, rendered in the Prometheus text
//! exposition format for `GET /metrics`.
//!
//! Owns: the numbers and their names, help texts and labels (label values
//! escaped as the text format requires, whatever they hold).
//! Must never: do I/O, take locks, or cost more than an add on a hot path.

use std::io::Write as _;

use crate::auth::Failure;
use crate::hub::NotRecovered;
use crate::route::RouteId;

/// How an open subscriber connection receives messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    /// A Server-Sent Events stream.
    Sse,
}

/// Transports, in the order [`Metrics::open_by_route`] keeps them per route.
const TRANSPORTS: usize = 2;

/// The gauge of [`Metrics::open_by_route`] that counts one open connection:
/// its route's, for its transport. `usize::from(gauge)` is its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gauge {
    pub route: RouteId,
    pub transport: Transport,
}

impl From<Gauge> for usize {
    fn from(gauge: Gauge) -> usize {
        usize::from(gauge.route.0) * TRANSPORTS + gauge.transport as usize
    }
}

/// An open connection as the gauges count it (`.0` is its gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counted(pub Gauge);

/// Why a handshake or plain HTTP request was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    LengthRequired,
    TooLarge,
    UpgradeRequired,
    HeadTooLarge,
    TooManyFromAddress,
    OverCapacity,
    Timeout,
    Other,
}

impl Refused {
    const ALL: [Refused; 13] = [
        Refused::BadRequest,
        Refused::Unauthorized,
        Refused::Forbidden,
        Refused::NotFound,
        Refused::MethodNotAllowed,
        Refused::LengthRequired,
        Refused::TooLarge,
        Refused::UpgradeRequired,
        Refused::HeadTooLarge,
        Refused::TooManyFromAddress,
        Refused::OverCapacity,
        Refused::Timeout,
        Refused::Other,
    ];

    /// The label for an HTTP error status.
    pub(crate) fn from_status(status: u16) -> Refused {
        match status {
            400 => Refused::BadRequest,
            401 => Refused::Unauthorized,
            403 => Refused::Forbidden,
            404 => Refused::NotFound,
            405 => Refused::MethodNotAllowed,
            411 => Refused::LengthRequired,
            413 => Refused::TooLarge,
            426 => Refused::UpgradeRequired,
            429 => Refused::TooManyFromAddress,
            431 => Refused::HeadTooLarge,
            503 => Refused::OverCapacity,
            408 => Refused::Timeout,
            _ => Refused::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refused::BadRequest => "bad_request",
            Refused::Unauthorized => "unauthorized",
            Refused::Forbidden => "forbidden",
            Refused::NotFound => "not_found",
            Refused::MethodNotAllowed => "method_not_allowed",
            Refused::LengthRequired => "length_required",
            Refused::TooLarge => "too_large",
            Refused::UpgradeRequired => "upgrade_required",
            Refused::HeadTooLarge => "head_too_large",
            Refused::TooManyFromAddress => "too_many_from_address",
            Refused::OverCapacity => "over_capacity",
            Refused::Timeout => "timeout",
            Refused::Other => "other",
        }
    }
}

/// Why a recovery was refused, in the order `/metrics` lists them.
const NOT_RECOVERED: [NotRecovered; 6] = [
    NotRecovered::Epoch,
    NotRecovered::Evicted,
    NotRecovered::Expired,
    NotRecovered::TooMany,
    NotRecovered::NoHistory,
    NotRecovered::Unavailable,
];

/// Every number `/metrics` reports. Counters only grow; gauges are set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    /// Open connections per route and transport (gauges), indexed by
    /// [`Gauge`]: two per entry of the route table, WebSocket then event
    /// stream; grows with the table when a reload adds routes
    /// ([`Metrics::set_routes`]).
    pub open_by_route: Vec<u64>,
    /// All accepted TCP connections currently held, in any phase (gauge).
    pub connections: u64,
    pub handshakes_accepted: u64,
    /// Server-Sent Events streams opened.
    pub sse_streams_accepted: u64,
    refused: [u64; Refused::ALL.len()],
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub slow_consumer_drops: u64,
    pub slow_consumer_closes: u64,
    pub channels: u64,
    pub subscriptions: u64,
    /// Messages and bytes kept in history across all channels (gauges).
    pub history_messages: u64,
    pub history_bytes: u64,
    /// Recoveries served, and the messages they replayed.
    pub history_recovered: u64,
    pub history_replayed: u64,
    /// Recoveries refused, by reason (indexed like [`NOT_RECOVERED`]).
    not_recovered: [u64; NOT_RECOVERED.len()],
    /// Signed tokens refused (upgrades and publishes), by check that failed.
    auth_refused: [u64; Failure::ALL.len()],
    /// Open connections closed because their token expired.
    pub auth_expired_closes: u64,
    /// The Redis bus, on a cluster node.
    pub cluster: Option<ClusterGauges>,
    /// How long the event loop's turns take.
    turns: LoopTurns,
}

/// Upper bounds of the loop-turn histogram's buckets, in microseconds: a
/// turn is how long every other client may wait behind the loop's work.
const TURN_BOUNDS_US: [u64; 9] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000];

/// The event loop's turns: a histogram (one count per turn, in the first
/// bucket whose bound it does not exceed; the last is unbounded), their
/// sum, and the longest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LoopTurns {
    counts: [u64; TURN_BOUNDS_US.len() + 1],
    sum_us: u64,
    longest_us: u64,
}

/// A cluster node's link states and bus counters (copied from the bus at
/// the end of each of its turns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClusterGauges {
    pub publish_link_up: bool,
    pub subscription_link_up: bool,
    pub channels_subscribed: u64,
    /// Recoveries in progress: waiting for Redis or for the live feed.
    pub recoveries_held: u64,
    pub stats: crate::bus::Stats,
}

impl Metrics {
    pub(crate) fn new(routes: usize) -> Metrics {
        Metrics {
            open_by_route: vec![0; routes * TRANSPORTS],
            ..Metrics::default()
        }
    }

    /// Makes room for a route table that grew to `routes` entries (a table
    /// never shrinks, so neither does this).
    pub(crate) fn set_routes(&mut self, routes: usize) {
        if routes * TRANSPORTS > self.open_by_route.len() {
            self.open_by_route.resize(routes * TRANSPORTS, 0);
        }
    }

    /// Counts a connection just opened on `gauge`'s route and transport.
    pub(crate) fn opened(&mut self, gauge: Gauge) {
        if let Some(open) = self.open_by_route.get_mut(usize::from(gauge)) {
            *open += 1;
        }
    }

    /// Open connections of one transport on all routes.
    pub(crate) fn open(&self, transport: Transport) -> u64 {
        self.open_by_route
            .iter()
            .skip(transport as usize)
            .step_by(TRANSPORTS)
            .sum()
    }

    /// Counts one turn of the event loop that took `took`.
    pub(crate) fn loop_turn(&mut self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = TURN_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(TURN_BOUNDS_US.len());
        if let Some(count) = self.turns.counts.get_mut(bucket) {
            *count += 1;
        }
        self.turns.sum_us = self.turns.sum_us.saturating_add(us);
        self.turns.longest_us = self.turns.longest_us.max(us);
    }

    /// Counts a recovery refused for `why`.
    pub(crate) fn count_not_recovered(&mut self, why: NotRecovered) {
        if let Some(slot) = NOT_RECOVERED
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.not_recovered.get_mut(i))
        {
            *slot += 1;
        }
    }

    pub(crate) fn refuse(&mut self, why: Refused) {
        if let Some(slot) = Refused::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.refused.get_mut(i))
        {
            *slot += 1;
        }
    }

    /// A signed token was refused (the request is also counted by status
    /// with [`Metrics::refuse`]).
    pub(crate) fn refuse_token(&mut self, why: Failure) {
        if let Some(slot) = Failure::ALL
            .iter()
            .position(|f| *f == why)
            .and_then(|i| self.auth_refused.get_mut(i))
        {
            *slot += 1;
        }
    }

    #[cfg(test)]
    pub(crate) fn refused(&self, why: Refused) -> u64 {
        Refused::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.refused.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Appends the exposition text; `route_paths` names the routes in table order.
    pub(crate) fn render<'a>(&self, route_paths: impl Iterator<Item = &'a str>, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = self.render_inner(route_paths, out);
    }

    fn render_inner<'a>(
        &self,
        route_paths: impl Iterator<Item = &'a str>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        header(
            out,
            "wshub_connections",
            "gauge",
            "TCP connections held, in any phase",
        )?;
        writeln!(out, "wshub_connections {}", self.connections)?;
        // A path appears twice in the table when a reload changed its
        // route's kind; one series per path, so add those up.
        let mut by_path: Vec<(&str, [u64; TRANSPORTS])> = Vec::new();
        for (path, open) in route_paths.zip(self.open_by_route.chunks_exact(TRANSPORTS)) {
            let open = [open[0], open[1]];
            match by_path.iter_mut().find(|(p, _)| *p == path) {
                Some((_, sum)) => {
                    sum[0] += open[0];
                    sum[1] += open[1];
                }
                None => by_path.push((path, open)),
            }
        }
        let gauges = [
            (
                "wshub_websocket_connections",
                "Open WebSocket connections by route",
            ),
            (
                "wshub_sse_connections",
                "Open Server-Sent Events streams by route",
            ),
        ];
        for (transport, (name, help)) in gauges.into_iter().enumerate() {
            header(out, name, "gauge", help)?;
            for (path, open) in &by_path {
                labelled(out, name, "route", path, open[transport])?;
            }
        }
        let counters = [
            (
                "wshub_handshakes_accepted_total",
                "WebSocket handshakes accepted",
                self.handshakes_accepted,
            ),
            (
                "wshub_sse_streams_total",
                "Server-Sent Events streams opened",
                self.sse_streams_accepted,
            ),
            (
                "wshub_messages_received_total",
                "Data messages received from clients",
                self.messages_in,
            ),
            (
                "wshub_received_bytes_total",
                "Payload bytes of data messages received",
                self.bytes_in,
            ),
            (
                "wshub_messages_sent_total",
                "Data messages queued to clients",
                self.messages_out,
            ),
            (
                "wshub_sent_bytes_total",
                "Frame bytes of data messages queued to clients",
                self.bytes_out,
            ),
            (
                "wshub_publishes_total",
                "Messages published (HTTP API and relayed client messages)",
                self.publishes,
            ),
            (
                "wshub_deliveries_total",
                "Published messages queued to a subscriber",
                self.deliveries,
            ),
            (
                "wshub_slow_consumer_drops_total",
                "Messages a slow subscriber missed (on_backlog = drop)",
                self.slow_consumer_drops,
            ),
            (
                "wshub_slow_consumer_closes_total",
                "Slow subscribers disconnected (on_backlog = close)",
                self.slow_consumer_closes,
            ),
        ];
        write_counters(out, &counters)?;
        header(
            out,
            "wshub_requests_refused_total",
            "counter",
            "Handshakes and HTTP requests refused, by reason",
        )?;
        for (why, count) in Refused::ALL.iter().zip(self.refused) {
            let name = "wshub_requests_refused_total";
            labelled(out, name, "reason", why.label(), count)?;
        }
        header(
            out,
            "wshub_channels",
            "gauge",
            "Channels with subscribers or history",
        )?;
        writeln!(out, "wshub_channels {}", self.channels)?;
        header(
            out,
            "wshub_subscriptions",
            "gauge",
            "Channel subscriptions across all connections",
        )?;
        writeln!(out, "wshub_subscriptions {}", self.subscriptions)?;
        self.render_history(out)?;
        let name = "wshub_auth_refused_total";
        header(
            out,
            name,
            "counter",
            "Signed tokens refused (upgrades and publishes), by the check that failed",
        )?;
        for (why, count) in Failure::ALL.iter().zip(self.auth_refused) {
            labelled(out, name, "reason", why.label(), count)?;
        }
        write_counters(
            out,
            &[(
                "wshub_auth_expired_closes_total",
                "Open connections closed because their token expired (close code 4001)",
                self.auth_expired_closes,
            )],
        )?;
        self.turns.render(out)?;
        if let Some(cluster) = &self.cluster {
            cluster.render(out)?;
        }
        Ok(())
    }
}

impl Metrics {
    fn render_history(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        header(
            out,
            "wshub_history_messages",
            "gauge",
            "Messages kept in history across all channels",
        )?;
        writeln!(out, "wshub_history_messages {}", self.history_messages)?;
        header(
            out,
            "wshub_history_bytes",
            "gauge",
            "Bytes of messages kept in history (counted against history_max_bytes)",
        )?;
        writeln!(out, "wshub_history_bytes {}", self.history_bytes)?;
        let counters = [
            (
                "wshub_recoveries_total",
                "Reconnecting clients given every message they missed",
                self.history_recovered,
            ),
            (
                "wshub_recovered_messages_total",
                "Messages replayed to recovering clients",
                self.history_replayed,
            ),
        ];
        write_counters(out, &counters)?;
        let name = "wshub_recoveries_refused_total";
        header(
            out,
            name,
            "counter",
            "Reconnecting clients told they cannot recover, by reason",
        )?;
        for (why, count) in NOT_RECOVERED.iter().zip(self.not_recovered) {
            labelled(out, name, "reason", why.as_str(), count)?;
        }
        Ok(())
    }
}

impl ClusterGauges {
    fn render(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        header(
            out,
            "wshub_cluster_link_up",
            "gauge",
            "Whether each link to Redis is up (1) or not (0)",
        )?;
        let links = [
            ("publish", self.publish_link_up),
            ("subscription", self.subscription_link_up),
        ];
        for (link, up) in links {
            labelled(out, "wshub_cluster_link_up", "link", link, u64::from(up))?;
        }
        header(
            out,
            "wshub_cluster_channels_subscribed",
            "gauge",
            "Channels this node is subscribed to in Redis",
        )?;
        writeln!(
            out,
            "wshub_cluster_channels_subscribed {}",
            self.channels_subscribed
        )?;
        header(
            out,
            "wshub_cluster_recoveries_held",
            "gauge",
            "Recoveries in progress (their clients' live messages held back)",
        )?;
        writeln!(
            out,
            "wshub_cluster_recoveries_held {}",
            self.recoveries_held
        )?;
        let s = &self.stats;
        let counters = [
            (
                "wshub_cluster_publishes_confirmed_total",
                "Publishes Redis accepted (answered 200)",
                s.publishes_confirmed,
            ),
            (
                "wshub_cluster_publishes_refused_total",
                "Publishes answered 503: Redis down, too slow or refusing",
                s.publishes_refused,
            ),
            (
                "wshub_cluster_publishes_late_total",
                "Publishes answered 503 whose acceptance by Redis came too late to answer 200",
                s.publishes_late,
            ),
            (
                "wshub_cluster_relays_dropped_total",
                "Chat relays dropped because Redis was down or refused them",
                s.relays_dropped,
            ),
            (
                "wshub_cluster_messages_received_total",
                "Messages received from Redis",
                s.messages_received,
            ),
            (
                "wshub_cluster_messages_undecodable_total",
                "Messages from Redis that were not a known envelope",
                s.messages_undecodable,
            ),
            (
                "wshub_cluster_reconnects_total",
                "Times the subscription link came up (first connection included)",
                s.reconnects,
            ),
            (
                "wshub_cluster_messages_repeated_total",
                "Messages from Redis dropped because their offset was already delivered",
                s.sequence.repeats,
            ),
            (
                "wshub_cluster_messages_filled_total",
                "Messages missing from the live feed delivered from the channel's stream",
                s.sequence.filled,
            ),
            (
                "wshub_cluster_messages_lost_total",
                "Offsets missing from the live feed that the stream no longer held",
                s.sequence.lost,
            ),
            (
                "wshub_cluster_gap_reads_total",
                "Reads of a channel's stream to fill a gap in the live feed",
                s.gap_reads,
            ),
            (
                "wshub_cluster_recovery_requests_total",
                "Recoveries asked of Redis",
                s.recovery_requests,
            ),
            (
                "wshub_cluster_recovery_reads_total",
                "Reads of Redis that served recoveries (identical ones coalesced)",
                s.recovery_reads,
            ),
            (
                "wshub_cluster_recoveries_unavailable_total",
                "Recoveries answered unavailable: Redis was not asked or did not answer in time",
                s.recoveries_unavailable,
            ),
        ];
        write_counters(out, &counters)?;
        Ok(())
    }
}

/// One sample with one label: `name{label="value"} sample`.
fn labelled(
    out: &mut Vec<u8>,
    name: &str,
    label: &str,
    value: &str,
    sample: u64,
) -> std::io::Result<()> {
    write!(out, "{name}{{{label}=\"")?;
    escape_label_value(value, out);
    writeln!(out, "\"}} {sample}")
}

/// Appends a label value escaped as the Prometheus text format requires:
/// backslash, double quote and line feed become `\\`, `\"` and `\n`.
/// Everything else (any UTF-8) goes through as is.
fn escape_label_value(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let mut plain = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'"' => b"\\\"",
            b'\n' => b"\\n",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        out.extend_from_slice(escaped);
        plain = at + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// Unlabelled counters: `(name, help, value)` each, with their headers.
fn write_counters(out: &mut Vec<u8>, counters: &[(&str, &str, u64)]) -> std::io::Result<()> {
    for &(name, help, value) in counters {
        header(out, name, "counter", help)?;
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

impl LoopTurns {
    fn render(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let name = "wshub_loop_turn_seconds";
        header(
            out,
            name,
            "histogram",
            "How long each turn of the event loop took: how long any client may wait behind the loop's other work",
        )?;
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            match TURN_BOUNDS_US.get(i) {
                Some(&bound) => writeln!(
                    out,
                    "{name}_bucket{{le=\"{}\"}} {cumulative}",
                    seconds(bound)
                )?,
                None => writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}")?,
            }
        }
        writeln!(out, "{name}_sum {}", seconds(self.sum_us))?;
        writeln!(out, "{name}_count {cumulative}")?;
        let longest = "wshub_loop_turn_longest_seconds";
        header(
            out,
            longest,
            "gauge",
            "The longest turn of the event loop since the process started",
        )?;
        writeln!(out, "{longest} {}", seconds(self.longest_us))
    }
}

/// Microseconds as seconds, exactly (no float rounding in the text).
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn header(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) -> std::io::Result<()> {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut m = Metrics::new(2);
        let live = |transport| Gauge {
            route: RouteId(1),
            transport,
        };
        for _ in 0..7 {
            m.opened(live(Transport::WebSocket));
        }
        m.opened(live(Transport::Sse));
        assert_eq!(m.open(Transport::WebSocket), 7);
        assert_eq!(m.open(Transport::Sse), 1);
        m.deliveries = 42;
        m.refuse(Refused::from_status(404));
        m.refuse(Refused::NotFound);
        let mut out = Vec::new();
        m.render(["/echo", "/live"].into_iter(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("wshub_websocket_connections{route=\"/live\"} 7\n"));
        assert!(text.contains("wshub_websocket_connections{route=\"/echo\"} 0\n"));
        assert!(text.contains("wshub_sse_connections{route=\"/live\"} 1\n"));
        assert!(text.contains("wshub_sse_connections{route=\"/echo\"} 0\n"));
        assert!(text.contains("wshub_deliveries_total 42\n"));
        assert!(text.contains("wshub_requests_refused_total{reason=\"not_found\"} 2\n"));
        assert_eq!(m.refused(Refused::NotFound), 2);
        // Every sample line belongs to a family announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            // A histogram's samples carry a suffix after its family's name.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let family = sample.strip_suffix(suffix)?;
                    text.contains(&format!("# TYPE {family} histogram"))
                        .then_some(family)
                })
                .unwrap_or(sample);
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn loop_turns_are_a_histogram_with_the_longest_beside_it() {
        let mut m = Metrics::new(1);
        for us in [40, 100, 101, 3_000, 250_000] {
            m.loop_turn(std::time::Duration::from_micros(us));
        }
        let mut out = Vec::new();
        m.render(["/echo"].into_iter(), &mut out);
        let text = String::from_utf8(out).unwrap();
        for line in [
            "wshub_loop_turn_seconds_bucket{le=\"0.000100\"} 2\n",
            "wshub_loop_turn_seconds_bucket{le=\"0.000250\"} 3\n",
            "wshub_loop_turn_seconds_bucket{le=\"0.005000\"} 4\n",
            "wshub_loop_turn_seconds_bucket{le=\"0.100000\"} 4\n",
            "wshub_loop_turn_seconds_bucket{le=\"+Inf\"} 5\n",
            "wshub_loop_turn_seconds_sum 0.253241\n",
            "wshub_loop_turn_seconds_count 5\n",
            "wshub_loop_turn_longest_seconds 0.250000\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_path_listed_twice_is_one_series() {
        let mut m = Metrics::new(2);
        m.set_routes(3);
        m.open_by_route[0] = 2;
        m.open_by_route[4] = 5;
        let mut out = Vec::new();
        m.render(["/a", "/b", "/a"].into_iter(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("wshub_websocket_connections{route=\"/a\"} 7\n"),
            "{text}"
        );
        let series = "wshub_websocket_connections{route=\"/a\"}";
        assert_eq!(text.matches(series).count(), 1, "{text}");
        assert_eq!(text.matches("route=\"/a\"").count(), 2, "one per transport");
    }

    #[test]
    fn label_values_are_escaped() {
        let cases: &[(&str, &str)] = &[
            ("/live", "/live"),
            ("", ""),
            ("/a\"b", "/a\\\"b"),
            ("/a\\b", "/a\\\\b"),
            ("/a\nb", "/a\\nb"),
            ("\\\"\n", "\\\\\\\"\\n"),
            ("/ünï\\", "/ünï\\\\"),
            ("/tab\there\r", "/tab\there\r"),
        ];
        for (raw, escaped) in cases {
            let mut out = b"x".to_vec();
            escape_label_value(raw, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("x{escaped}"),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn route_labels_are_escaped_in_the_exposition() {
        let mut m = Metrics::new(3);
        m.open_by_route = vec![1, 0, 2, 0, 3, 0];
        let mut out = Vec::new();
        m.render(
            ["/q\"uote", "/back\\slash", "/new\nline"].into_iter(),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        for series in [
            "wshub_websocket_connections{route=\"/q\\\"uote\"} 1\n",
            "wshub_websocket_connections{route=\"/back\\\\slash\"} 2\n",
            "wshub_websocket_connections{route=\"/new\\nline\"} 3\n",
        ] {
            assert!(text.contains(series), "{series:?} missing from {text}");
        }
        // Every sample stays on one line of the form name{...} value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("wshub_"), "{line:?}");
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn every_status_maps_to_a_label() {
        for status in [400, 401, 403, 404, 405, 408, 411, 413, 426, 431, 503, 999] {
            let why = Refused::from_status(status);
            assert!(!why.label().is_empty());
        }
        assert_eq!(Refused::from_status(999), Refused::Other);
    }
}
