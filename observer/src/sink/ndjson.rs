//! Records → NDJSON lines with ECS names (docs/schema.md). Formatting only: every value comes
//! from the tracker. Serialises borrowed structs into a reused buffer, without allocating.

use std::net::IpAddr;

use serde::Serialize;

use super::{alert_line, conn_line, timefmt::Rfc3339, tls_line};
use crate::track::{
    lifecycle::state_name,
    record::{LossRecord, Losses, Output, Role, SinkLoss, StateRecord},
};

/// Bumped when a field changes meaning or disappears; additions keep it.
pub const SCHEMA_VERSION: &str = "1";

/// Turns records into lines; holds what every line shares.
pub struct Encoder {
    host: String,
    boot_to_unix_ns: i64,
}

#[derive(Serialize)]
struct Host<'a> {
    name: &'a str,
}

/// What the anomaly and TLS lines open with: `@timestamp`, `schema_version`, `event.*` and
/// `host.name`; flattened into each line, so it serialises byte for byte as if written there.
#[derive(Serialize)]
pub(super) struct Head<'a, E> {
    #[serde(rename = "@timestamp")]
    timestamp: Rfc3339,
    schema_version: &'static str,
    event: E,
    host: Host<'a>,
}

impl<'a, E> Head<'a, E> {
    pub(super) fn new(timestamp: Rfc3339, event: E, host: &'a str) -> Self {
        Self {
            timestamp,
            schema_version: SCHEMA_VERSION,
            event,
            host: Host { name: host },
        }
    }
}

#[derive(Serialize)]
struct EventFields {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    types: &'static [&'static str],
    dataset: &'static str,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<Rfc3339>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<Rfc3339>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<u64>,
}

impl EventFields {
    /// An event with no outcome or timing.
    fn plain(
        kind: &'static str,
        types: &'static [&'static str],
        dataset: &'static str,
        action: &'static str,
    ) -> Self {
        Self {
            kind,
            category: ["network"],
            types,
            dataset,
            action,
            outcome: None,
            start: None,
            end: None,
            duration: None,
        }
    }
}

#[derive(Serialize)]
struct EndFields {
    ip: IpAddr,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets: Option<u32>,
}

#[derive(Serialize)]
struct Network<'a> {
    transport: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    iana_number: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    community_id: Option<&'a str>,
}

impl Network<'_> {
    fn tcp(ipv6: bool) -> Self {
        Self {
            transport: "tcp",
            kind: if ipv6 { "ipv6" } else { "ipv4" },
            iana_number: "6",
            community_id: None,
        }
    }
}

#[derive(Serialize)]
struct StateConn<'a> {
    uid: &'a str,
    role: &'static str,
    old_state: &'static str,
    new_state: &'static str,
    netns: u32,
}

#[derive(Serialize)]
struct StateLine<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: Rfc3339,
    schema_version: &'static str,
    event: EventFields,
    host: Host<'a>,
    conn: StateConn<'a>,
    source: EndFields,
    destination: EndFields,
    network: Network<'a>,
}

#[derive(Serialize)]
struct LossFields<'a> {
    #[serde(flatten)]
    delta: &'a Losses,
    #[serde(skip_serializing_if = "SinkDrops::is_empty")]
    sink: SinkDrops<'a>,
    total: LossTotal<'a>,
    events_delivered: u64,
}

#[derive(Serialize)]
struct LossTotal<'a> {
    #[serde(flatten)]
    losses: &'a Losses,
    #[serde(skip_serializing_if = "SinkDrops::is_empty")]
    sink: SinkDrops<'a>,
}

/// `{"<sink>": {"dropped": N}}`: since the previous line, or (`total`) since the start.
struct SinkDrops<'a> {
    sinks: &'a [SinkLoss],
    total: bool,
}

impl SinkDrops<'_> {
    fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

#[derive(Serialize)]
struct Dropped {
    dropped: u64,
}

impl Serialize for SinkDrops<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.sinks.len()))?;
        for s in self.sinks {
            let dropped = if self.total { s.total } else { s.dropped };
            map.serialize_entry(s.name, &Dropped { dropped })?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct LossLine<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: Rfc3339,
    schema_version: &'static str,
    event: EventFields,
    host: Host<'a>,
    loss: LossFields<'a>,
}

/// The observer's own start and stop (`event.dataset` = `observer.agent`).
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub action: &'static str,
    pub reason: Option<&'static str>,
    pub ts_ns: u64,
    pub version: &'static str,
    pub kernel: String,
    pub hooks: Vec<String>,
    /// Connection records written, at stop.
    pub records: Option<u64>,
    pub transitions: bool,
    pub accept_hook: bool,
    pub max_connections: u32,
    pub ring_mib: u32,
    pub queue_mib: u32,
    /// At stop: each output's lines before this one, and how many of them it dropped.
    pub sinks: Vec<(&'static str, crate::sink::Totals)>,
}

#[derive(Serialize)]
struct AgentLine<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: Rfc3339,
    schema_version: &'static str,
    event: AgentEvent<'a>,
    host: Host<'a>,
    observer: AgentObserver<'a>,
}

#[derive(Serialize)]
struct AgentEvent<'a> {
    kind: &'static str,
    dataset: &'static str,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct AgentObserver<'a> {
    version: &'a str,
    os: AgentOs<'a>,
    hooks: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<u64>,
    #[serde(skip_serializing_if = "AgentSinks::is_empty")]
    sink: AgentSinks<'a>,
    config: AgentConfig,
}

/// `{"<sink>": {"lines": N, "dropped": N}}`.
struct AgentSinks<'a>(&'a [(&'static str, crate::sink::Totals)]);

impl AgentSinks<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Serialize)]
struct SinkLines {
    lines: u64,
    dropped: u64,
}

impl Serialize for AgentSinks<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, t) in self.0 {
            let lines = SinkLines {
                lines: t.lines,
                dropped: t.dropped,
            };
            map.serialize_entry(name, &lines)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct AgentOs<'a> {
    kernel: &'a str,
}

#[derive(Serialize)]
struct AgentConfig {
    transitions: bool,
    accept_hook: bool,
    max_connections: u32,
    ring_mib: u32,
    queue_mib: u32,
}

pub(super) fn wall(boot_ns: u64, offset: i64) -> i64 {
    i64::try_from(boot_ns)
        .unwrap_or(i64::MAX)
        .saturating_add(offset)
}

/// Name of an errno value the kernel leaves in `sk_err`.
pub(super) fn errno_name(err: i32) -> Option<&'static str> {
    Some(match err {
        0 => return None,
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EPIPE => "EPIPE",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPROTO => "EPROTO",
        _ => "EOTHER",
    })
}

impl Encoder {
    #[must_use]
    pub fn new(host: String, boot_to_unix_ns: i64) -> Self {
        Self {
            host,
            boot_to_unix_ns,
        }
    }

    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `CLOCK_BOOTTIME` to Unix time, in nanoseconds.
    #[must_use]
    pub fn offset(&self) -> i64 {
        self.boot_to_unix_ns
    }

    fn ts(&self, boot_ns: u64) -> Rfc3339 {
        Rfc3339::from_unix_ns(wall(boot_ns, self.boot_to_unix_ns))
    }

    /// Appends one line (with its newline) to `buf`.
    ///
    /// # Errors
    /// Only if serialisation fails, which these types never do.
    pub fn write(&self, output: &Output, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        match output {
            Output::Connection(c) => conn_line::write(c, &self.host, self.boot_to_unix_ns, buf),
            Output::State(s) => self.state(s, buf)?,
            Output::Loss(l) => self.loss(l, buf)?,
            Output::Tls(t) => tls_line::write(t, &self.host, self.boot_to_unix_ns, buf)?,
        }
        buf.push(b'\n');
        Ok(())
    }

    /// Appends one alert line (with its newline) to `buf`.
    ///
    /// # Errors
    /// Only if serialisation fails, which these types never do.
    pub fn alert(&self, a: &crate::detect::Alert, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        alert_line::write(a, &self.host, self.boot_to_unix_ns, buf)?;
        buf.push(b'\n');
        Ok(())
    }

    /// Appends the observer's start or stop line to `buf`.
    ///
    /// # Errors
    /// Only if serialisation fails, which these types never do.
    pub fn agent(&self, a: &AgentRecord, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        let line = AgentLine {
            timestamp: self.ts(a.ts_ns),
            schema_version: SCHEMA_VERSION,
            event: AgentEvent {
                kind: "event",
                dataset: "observer.agent",
                action: a.action,
                reason: a.reason,
            },
            host: Host { name: &self.host },
            observer: AgentObserver {
                version: a.version,
                os: AgentOs { kernel: &a.kernel },
                hooks: &a.hooks,
                records: a.records,
                sink: AgentSinks(&a.sinks),
                config: AgentConfig {
                    transitions: a.transitions,
                    accept_hook: a.accept_hook,
                    max_connections: a.max_connections,
                    ring_mib: a.ring_mib,
                    queue_mib: a.queue_mib,
                },
            },
        };
        serde_json::to_writer(&mut *buf, &line)?;
        buf.push(b'\n');
        Ok(())
    }

    fn state(&self, s: &StateRecord, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        let end = |(ip, port): (IpAddr, u16)| EndFields {
            ip,
            port,
            bytes: None,
            packets: None,
        };
        let (source, destination) = if s.role == Role::Server {
            (s.remote, s.local)
        } else {
            (s.local, s.remote)
        };
        let line = StateLine {
            timestamp: self.ts(s.ts_ns),
            schema_version: SCHEMA_VERSION,
            event: EventFields::plain(
                "event",
                &["connection", "change"],
                "observer.state",
                "state_change",
            ),
            host: Host { name: &self.host },
            conn: StateConn {
                uid: s.uid.as_str(),
                role: s.role.as_str(),
                old_state: state_name(s.old_state),
                new_state: state_name(s.new_state),
                netns: s.netns,
            },
            source: end(source),
            destination: end(destination),
            network: Network::tcp(s.ipv6),
        };
        serde_json::to_writer(buf, &line)
    }

    fn loss(&self, l: &LossRecord, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        let line = LossLine {
            timestamp: self.ts(l.ts_ns),
            schema_version: SCHEMA_VERSION,
            event: EventFields::plain(
                "metric",
                &["info"],
                "observer.loss",
                if l.summary { "summary" } else { "loss" },
            ),
            host: Host { name: &self.host },
            loss: LossFields {
                delta: &l.delta,
                sink: SinkDrops {
                    sinks: &l.sinks,
                    total: false,
                },
                total: LossTotal {
                    losses: &l.total,
                    sink: SinkDrops {
                        sinks: &l.sinks,
                        total: true,
                    },
                },
                events_delivered: l.events,
            },
        };
        serde_json::to_writer(buf, &line)
    }
}
