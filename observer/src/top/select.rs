//! Which rows a view shows, and in what order: the `/` filter and the sort column.

use std::cmp::Ordering;

use super::{
    alerts::Anomaly,
    model::{Conn, Proc},
};
use crate::{
    filter::{self, Dataset, End, Fields, Key, States},
    track::record::Process,
};

/// The columns of the Connections view, in screen order.
pub const CONN_COLUMNS: [&str; 13] = [
    "PID", "COMM", "LOCAL", "REMOTE", "STATE", "AGE", "IN-STATE", "RX", "TX", "RTT", "RETX", "TLS",
    "SNI",
];

/// The columns of the Processes view, in screen order.
pub const PROC_COLUMNS: [&str; 12] = [
    "PID",
    "COMM",
    "CONNS",
    "NEW/s",
    "ESTAB",
    "LISTEN",
    "CLOSE_WAIT",
    "TIME_WAIT",
    "OTHER",
    "RETX",
    "RX+TX",
    "BYTES/s",
];

/// The columns of the Anomalies view, in screen order.
pub const ALERT_COLUMNS: [&str; 9] = [
    "STATUS",
    "RULE",
    "SEV",
    "PID",
    "COMM",
    "DESTINATION",
    "SINCE",
    "OBS/THR",
    "REASON",
];

/// A `/` expression in the shared filter language (docs/filters.md), read as typed
/// ([`filter::Filter::lenient`]). A key a view does not show is ignored there: `port:443`
/// leaves the Processes view whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter(filter::Filter);

/// What the Connections (and Listeners) view does not show.
const CONN_IGNORES: [Key; 6] = [
    Key::Role,
    Key::Netns,
    Key::Cgroup,
    Key::Container,
    Key::ConnState,
    Key::Rule,
];

/// The Processes view shows pids and names only.
const PROC_IGNORES: [Key; 13] = [
    Key::Port,
    Key::Sport,
    Key::Dport,
    Key::State,
    Key::Addr,
    Key::Cgroup,
    Key::Container,
    Key::Dataset,
    Key::Sni,
    Key::Role,
    Key::Netns,
    Key::ConnState,
    Key::Rule,
];

/// An alert's subject has no source, server name, role, cgroup or Zeek state.
const ANOMALY_IGNORES: [Key; 6] = [
    Key::Sport,
    Key::Sni,
    Key::Role,
    Key::Cgroup,
    Key::Container,
    Key::ConnState,
];

impl Filter {
    #[must_use]
    pub fn parse(text: &str) -> Self {
        Self(filter::Filter::lenient(text))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `sport` is the local end, `dport` the remote one; `state` the state now.
    #[must_use]
    pub fn admits(&self, c: &Conn) -> bool {
        self.0.admits(&Fields {
            dataset: Some(Dataset::Connection),
            source: Some(End::from(c.local)),
            destination: Some(End::from(c.remote)),
            pid: c.pid,
            comm: Some(&c.comm),
            states: States::One(c.state_name()),
            sni: c.sni(),
            ignore: &CONN_IGNORES,
            ..Fields::default()
        })
    }

    /// A process row passes when its pid or name matches every pid/comm/bare term.
    #[must_use]
    pub fn admits_proc(&self, p: &Proc) -> bool {
        self.0.admits(&Fields {
            pid: p.pid,
            comm: Some(&p.comm),
            ignore: &PROC_IGNORES,
            ..Fields::default()
        })
    }

    /// An alert passes when its subject matches every term: `pid`, `comm`, `port` and
    /// `addr` (its destination), `state` (`firing`, `resolved`), bare words also its rule.
    #[must_use]
    pub fn admits_anomaly(&self, a: &Anomaly) -> bool {
        let s = &a.alert.subject;
        self.0.admits(&Fields {
            dataset: Some(Dataset::Anomaly),
            destination: s.destination.map(|(ip, port)| End {
                ip,
                port: (port != 0).then_some(port),
            }),
            pid: s.process.map(|p| p.pid),
            comm: s.process.as_ref().map(Process::name),
            states: States::One(if a.firing() { "firing" } else { "resolved" }),
            netns: s.netns,
            rule: Some(a.alert.rule),
            ignore: &ANOMALY_IGNORES,
            ..Fields::default()
        })
    }
}

/// Orders two connections by column `col` of [`CONN_COLUMNS`]; unknown values sort first.
#[must_use]
pub fn cmp_conn(a: &Conn, b: &Conn, col: usize) -> Ordering {
    let by = match col {
        0 => a.pid.cmp(&b.pid),
        1 => a.comm.cmp(&b.comm),
        2 => a.local.cmp(&b.local),
        3 => a.remote.cmp(&b.remote),
        4 => a.state_name().cmp(b.state_name()),
        5 => a.age_ns.cmp(&b.age_ns),
        6 => a.in_state_ns.cmp(&b.in_state_ns),
        7 => a.bytes_in.cmp(&b.bytes_in),
        8 => a.bytes_out.cmp(&b.bytes_out),
        9 => a.rtt_us.cmp(&b.rtt_us),
        10 => a.retransmits.cmp(&b.retransmits),
        11 => a.tls_version().cmp(&b.tls_version()),
        _ => a.sni().cmp(&b.sni()),
    };
    // Ties keep a stable, meaningful order.
    by.then_with(|| (a.local, a.remote, a.cookie).cmp(&(b.local, b.remote, b.cookie)))
}

/// Orders two processes by column `col` of [`PROC_COLUMNS`].
#[must_use]
pub fn cmp_proc(a: &Proc, b: &Proc, col: usize) -> Ordering {
    let by = match col {
        0 => a.pid.cmp(&b.pid),
        1 => a.comm.cmp(&b.comm),
        2 => a.total.cmp(&b.total),
        3 => a.new_per_s.total_cmp(&b.new_per_s),
        4 => a.established.cmp(&b.established),
        5 => a.listen.cmp(&b.listen),
        6 => a.close_wait.cmp(&b.close_wait),
        7 => a.time_wait.cmp(&b.time_wait),
        8 => a.other.cmp(&b.other),
        9 => a.retransmits.cmp(&b.retransmits),
        10 => (a.bytes_in + a.bytes_out).cmp(&(b.bytes_in + b.bytes_out)),
        _ => a.bytes_per_s.total_cmp(&b.bytes_per_s),
    };
    by.then_with(|| (a.pid, &a.comm).cmp(&(b.pid, &b.comm)))
}

/// Orders two alerts by column `col` of [`ALERT_COLUMNS`]; the status column puts firing
/// first, newest first.
#[must_use]
pub fn cmp_anomaly(a: &Anomaly, b: &Anomaly, col: usize) -> Ordering {
    let (x, y) = (&a.alert, &b.alert);
    let by = match col {
        0 => b.firing().cmp(&a.firing()),
        1 => x.rule.cmp(y.rule),
        2 => x.severity.cmp(&y.severity),
        3 => x
            .subject
            .process
            .map(|p| p.pid)
            .cmp(&y.subject.process.map(|p| p.pid)),
        4 => x
            .subject
            .process
            .map(|p| p.comm)
            .cmp(&y.subject.process.map(|p| p.comm)),
        5 => x.subject.destination.cmp(&y.subject.destination),
        6 => b.fired_ns.cmp(&a.fired_ns),
        7 => x.observed.cmp(&y.observed),
        _ => x.reason.cmp(&y.reason),
    };
    by.then_with(|| b.changed_ns().cmp(&a.changed_ns()))
        .then_with(|| x.rule.cmp(y.rule))
}

/// The alerts `filter` admits, sorted by `col` (reversed when `reverse`).
#[must_use]
pub fn anomalies<'a>(
    all: &'a [Anomaly],
    filter: &Filter,
    col: usize,
    reverse: bool,
) -> Vec<&'a Anomaly> {
    let mut rows: Vec<&Anomaly> = all.iter().filter(|a| filter.admits_anomaly(a)).collect();
    rows.sort_by(|a, b| {
        let o = cmp_anomaly(a, b, col);
        if reverse { o.reverse() } else { o }
    });
    rows
}

/// The connections `filter` admits, sorted by `col` (descending when `reverse`).
#[must_use]
pub fn conns<'a>(all: &'a [Conn], filter: &Filter, col: usize, reverse: bool) -> Vec<&'a Conn> {
    let mut rows: Vec<&Conn> = all.iter().filter(|c| filter.admits(c)).collect();
    rows.sort_unstable_by(|a, b| {
        let o = cmp_conn(a, b, col);
        if reverse { o.reverse() } else { o }
    });
    rows
}

/// The processes `filter` admits, sorted by `col` (descending when `reverse`).
#[must_use]
pub fn procs(mut all: Vec<Proc>, filter: &Filter, col: usize, reverse: bool) -> Vec<Proc> {
    all.retain(|p| filter.admits_proc(p));
    all.sort_unstable_by(|a, b| {
        let o = cmp_proc(a, b, col);
        if reverse { o.reverse() } else { o }
    });
    all
}
