//! `connect_failures`, per destination: a burst of refused or timed-out `connect()`s to one
//! (netns, ip, port), from closed client records (`conn.close_reason` `refused` or `timeout`).
//! A dead backend or a firewall dropping SYNs shows here before anyone reads a log. Resolved
//! once a whole window passes without a failure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::{
    Alert, SAMPLES, Status, Subject, endpoint,
    window::{self, Item, Windows},
};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 5;
pub const DEFAULT_WINDOW_S: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Fires at this many failures to one destination within the window.
    pub count: u64,
    pub window_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            window_s: DEFAULT_WINDOW_S,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    uid: Uid,
    process: Option<Process>,
    timeout: bool,
}

/// (netns, ip, port) of the destination.
type Key = (u32, IpAddr, u16);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    dests: Windows<Key, Failure>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            dests: Windows::new(config.window_s),
        }
    }

    /// One connection record: counted when it is a client's failed connect.
    pub fn record(&mut self, c: &ConnRecord, alerts: &mut Vec<Alert>) {
        let timeout = match c.close_reason {
            "refused" => false,
            "timeout" if c.conn_state == "S0" => true,
            _ => return,
        };
        if c.kind != RecordKind::Closed || c.role != Role::Client {
            return;
        }
        let key = (c.netns, c.destination.ip, c.destination.port);
        let item = Item {
            ts_ns: c.end_ns,
            weight: 1,
            data: Failure {
                uid: c.uid,
                process: c.process,
                timeout,
            },
        };
        let window_ns = self.dests.window_ns();
        let config = &self.config;
        self.dests.push(
            key,
            item,
            |_| (config.count, 0),
            |status, at, s| {
                alerts.push(alert(config, window_ns, status, at, key, s));
            },
        );
    }

    /// Resolves the destinations without a failure for a whole window before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = self.dests.window_ns();
        let config = &self.config;
        // Stamped when the window ran out, not when it was noticed: replay agrees.
        self.dests.tick(
            now_ns,
            |_| 0,
            |at, key, dest| alerts.push(alert(config, window_ns, Status::Resolved, at, *key, dest)),
        );
    }
}

fn alert(
    config: &Config,
    window_ns: u64,
    status: Status,
    ts_ns: u64,
    key: Key,
    dest: &window::Subject<Failure>,
) -> Alert {
    let in_window: Vec<&Failure> = dest.window.at(window_ns, ts_ns).map(|i| &i.data).collect();
    let timeouts = in_window.iter().filter(|f| f.timeout).count() as u64;
    let observed = in_window.len() as u64;
    // The process that failed most recently names the subject.
    let process = dest.window.last().and_then(|i| i.data.process);
    let target = endpoint((key.1, key.2));
    let who = process.map_or_else(String::new, |p| {
        format!(" from {} (pid {})", p.name(), p.pid)
    });
    let reason = match status {
        Status::Firing => format!(
            "{observed} connects to {target}{who} failed within {} s ({} refused, {timeouts} \
                 timed out): check that the service at {target} is up and that no firewall \
                 drops its SYNs",
            config.window_s,
            observed - timeouts,
        ),
        Status::Resolved => format!(
            "no failed connect to {target} for {} s ({} failed while firing)",
            config.window_s, dest.total
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("refused", json!(observed - timeouts));
    evidence.insert("timeouts", json!(timeouts));
    evidence.insert("total", json!(dest.total));
    Alert {
        rule: "connect_failures",
        status,
        ts_ns,
        severity: 3,
        reason,
        subject: Subject {
            netns: Some(key.0),
            process,
            destination: Some((key.1, key.2)),
        },
        observed,
        threshold: config.count,
        window_s: config.window_s,
        evidence,
        samples: in_window
            .iter()
            .rev()
            .take(SAMPLES)
            .map(|f| f.uid)
            .collect(),
    }
}
