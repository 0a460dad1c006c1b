//! `time_wait_pressure`, per (netns, local ip, remote ip:port): time-wait sockets against the
//! ephemeral port range of the namespace. A connection to one destination needs a local port
//! that is not held by a time-wait socket of the same four-tuple; when a process churns
//! short connections to one destination and closes first, each close parks its port in
//! `TIME_WAIT` for 60 s (`TCP_TIMEWAIT_LEN`, fixed in Linux), and once the range is used up
//! `connect()` fails with `EADDRNOTAVAIL` (or, with `tcp_tw_reuse`, reuses ports early).
//!
//! Fed by a census of time-wait sockets (a kernel-filtered `sock_diag` dump per namespace, with
//! its `net.ipv4.ip_local_port_range`, read every few seconds and recorded) and by connection
//! records, which name the process that churns: the owner of the connections to that
//! destination that closed first. Fires when the count reaches a percentage of the range;
//! resolved when it has drained below half of that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use super::{Alert, NS, SAMPLES, Status, Subject, endpoint};
use crate::{
    facts::TimeWaitCensus,
    track::record::{ConnRecord, Process, RecordKind, Role, Uid},
};

pub const DEFAULT_PERCENT: u64 = 50;
/// How long a socket stays in `TIME_WAIT` (`TCP_TIMEWAIT_LEN`).
pub const TIME_WAIT_S: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Fires when the time-wait sockets of one (local ip, destination) reach this percentage
    /// of the namespace's ephemeral port range.
    pub percent: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            percent: DEFAULT_PERCENT,
        }
    }
}

/// (netns, local ip, remote ip:port).
type Key = (u32, IpAddr, SocketAddr);

/// Connections to one destination that closed first, in the last `TIME_WAIT_S`.
#[derive(Debug, Default)]
struct Churn {
    ends: VecDeque<(u64, Uid)>,
    process: Option<Process>,
}

#[derive(Debug, Clone, Copy)]
struct Firing {
    threshold: u64,
    range: (u16, u16),
    peak: u64,
    process: Option<Process>,
}

#[derive(Debug)]
pub struct Rule {
    config: Config,
    churn: HashMap<Key, Churn>,
    firing: BTreeMap<Key, Firing>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            churn: HashMap::new(),
            firing: BTreeMap::new(),
        }
    }

    /// One connection record: a close this end initiated parks its port in `TIME_WAIT`.
    pub fn record(&mut self, c: &ConnRecord) {
        if c.kind != RecordKind::Closed || c.close_initiator != "local" || c.close_reason != "fin" {
            return;
        }
        let (local, remote) = if c.role == Role::Server {
            (c.destination, c.source)
        } else {
            (c.source, c.destination)
        };
        let key = (c.netns, local.ip, SocketAddr::new(remote.ip, remote.port));
        let churn = self.churn.entry(key).or_default();
        churn.ends.push_back((c.end_ns, c.uid));
        if c.process.is_some() {
            churn.process = c.process;
        }
        let horizon = c.end_ns.saturating_sub(TIME_WAIT_S * NS);
        while churn.ends.front().is_some_and(|&(t, _)| t < horizon) {
            churn.ends.pop_front();
        }
    }

    /// A census of time-wait sockets at `c.ts_ns`.
    pub fn census(&mut self, c: &TimeWaitCensus, alerts: &mut Vec<Alert>) {
        let now = c.ts_ns;
        let horizon = now.saturating_sub(TIME_WAIT_S * NS);
        self.churn.retain(|_, ch| {
            while ch.ends.front().is_some_and(|&(t, _)| t < horizon) {
                ch.ends.pop_front();
            }
            !ch.ends.is_empty()
        });
        let mut counts: BTreeMap<Key, (u64, (u16, u16))> = BTreeMap::new();
        for ns in &c.namespaces {
            let Some(range) = ns.port_range.filter(|(lo, hi)| lo <= hi) else {
                continue;
            };
            for &(local, remote, n) in &ns.pairs {
                counts.insert((ns.netns, local, remote), (u64::from(n), range));
            }
        }
        for (&key, &(count, range)) in &counts {
            if let Some(f) = self.firing.get_mut(&key) {
                f.peak = f.peak.max(count);
                continue;
            }
            let size = u64::from(range.1 - range.0) + 1;
            let threshold = (size * self.config.percent).div_ceil(100).max(1);
            if count < threshold {
                continue;
            }
            let process = self.churn.get(&key).and_then(|ch| ch.process);
            let f = Firing {
                threshold,
                range,
                peak: count,
                process,
            };
            self.firing.insert(key, f);
            alerts.push(self.alert(Status::Firing, now, key, count, f));
        }
        // Drained below half the firing level (or gone with its namespace): resolved.
        let drained: Vec<(Key, u64)> = self
            .firing
            .iter()
            .map(|(k, f)| (*k, counts.get(k).map_or(0, |c| c.0), f.threshold))
            .filter(|&(_, count, threshold)| count < threshold.div_ceil(2))
            .map(|(k, count, _)| (k, count))
            .collect();
        for (key, count) in drained {
            if let Some(f) = self.firing.remove(&key) {
                let mut alert = self.alert(Status::Resolved, now, key, count, f);
                alert.evidence.insert("peak", json!(f.peak));
                alerts.push(alert);
            }
        }
    }

    fn alert(&self, status: Status, now: u64, key: Key, count: u64, f: Firing) -> Alert {
        let (netns, local, remote) = key;
        let size = u64::from(f.range.1 - f.range.0) + 1;
        let churn = self.churn.get(&key);
        let closed = churn.map_or(0, |ch| ch.ends.len() as u64);
        let who = f.process.map_or_else(
            || "no process seen closing them".to_owned(),
            |p| format!("{} (pid {})", p.name(), p.pid),
        );
        let reason = match status {
            Status::Firing => format!(
                "{count} sockets from {local} to {} in TIME_WAIT, {}% of the {size} ephemeral \
                 ports ({}-{}); {who} closed {closed} such connections first in the last {} s: \
                 reuse connections (keep-alive, a pool), let the server close first, or widen \
                 net.ipv4.ip_local_port_range before connect() fails with EADDRNOTAVAIL",
                endpoint((remote.ip(), remote.port())),
                count * 100 / size,
                f.range.0,
                f.range.1,
                TIME_WAIT_S,
            ),
            Status::Resolved => format!(
                "TIME_WAIT sockets from {local} to {} drained to {count} of {size} ports",
                endpoint((remote.ip(), remote.port())),
            ),
        };
        let mut evidence = BTreeMap::new();
        evidence.insert("local_ip", json!(local));
        evidence.insert("port_range", json!([f.range.0, f.range.1]));
        evidence.insert("port_range_size", json!(size));
        evidence.insert("percent", json!(self.config.percent));
        evidence.insert("closed_locally", json!(closed));
        let samples = if status == Status::Firing {
            churn.map_or_else(Vec::new, |ch| {
                ch.ends
                    .iter()
                    .rev()
                    .take(SAMPLES)
                    .map(|&(_, u)| u)
                    .collect()
            })
        } else {
            Vec::new()
        };
        Alert {
            rule: "time_wait_pressure",
            status,
            ts_ns: now,
            severity: 3,
            reason,
            subject: Subject {
                netns: Some(netns),
                process: f.process,
                destination: Some((remote.ip(), remote.port())),
            },
            observed: count,
            threshold: f.threshold,
            window_s: TIME_WAIT_S,
            evidence,
            samples,
        }
    }
}
