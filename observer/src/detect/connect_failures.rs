//! `connect_failures`, per destination: a burst of refused or timed-out `connect()`s to one
//! (netns, ip, port), from closed client records (`conn.close_reason` `refused` or `timeout`).
//! A dead backend or a firewall dropping SYNs shows here before anyone reads a log. Resolved
//! once a whole window passes without a failure.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::json;

use super::{Alert, NS, SAMPLES, Status, Subject, endpoint};
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
    end_ns: u64,
    uid: Uid,
    process: Option<Process>,
    timeout: bool,
}

#[derive(Debug, Default)]
struct Dest {
    recent: VecDeque<Failure>,
    firing: bool,
    /// Failures since it fired.
    total: u64,
}

/// (netns, ip, port) of the destination.
type Key = (u32, IpAddr, u16);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    dests: HashMap<Key, Dest>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            dests: HashMap::new(),
        }
    }

    fn window_ns(&self) -> u64 {
        self.config.window_s.saturating_mul(NS)
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
        let window_ns = self.window_ns();
        let threshold = self.config.count;
        let dest = self.dests.entry(key).or_default();
        dest.recent.push_back(Failure {
            end_ns: c.end_ns,
            uid: c.uid,
            process: c.process,
            timeout,
        });
        while dest
            .recent
            .front()
            .is_some_and(|f| f.end_ns.saturating_add(window_ns) <= c.end_ns)
        {
            dest.recent.pop_front();
        }
        if dest.firing {
            dest.total += 1;
            return;
        }
        if (dest.recent.len() as u64) >= threshold {
            dest.firing = true;
            dest.total = dest.recent.len() as u64;
            let alert = self.alert(Status::Firing, c.end_ns, key);
            alerts.push(alert);
        }
    }

    /// Resolves the destinations without a failure for a whole window before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = self.window_ns();
        let mut quiet: Vec<Key> = Vec::new();
        for (key, dest) in &self.dests {
            let last = dest.recent.back().map_or(0, |f| f.end_ns);
            if last.saturating_add(window_ns) <= now_ns {
                quiet.push(*key);
            }
        }
        quiet.sort_unstable();
        for key in quiet {
            let firing = self.dests.get(&key).is_some_and(|d| d.firing);
            if firing {
                let last = self.dests[&key].recent.back().map_or(0, |f| f.end_ns);
                // Stamped when the window ran out, not when it was noticed: replay agrees.
                let alert = self.alert(Status::Resolved, last.saturating_add(window_ns), key);
                alerts.push(alert);
            }
            self.dests.remove(&key);
        }
    }

    fn alert(&self, status: Status, ts_ns: u64, key: Key) -> Alert {
        let dest = &self.dests[&key];
        let window_ns = self.window_ns();
        let in_window: Vec<&Failure> = dest
            .recent
            .iter()
            .filter(|f| f.end_ns.saturating_add(window_ns) > ts_ns)
            .collect();
        let timeouts = in_window.iter().filter(|f| f.timeout).count() as u64;
        let observed = in_window.len() as u64;
        // The process that failed most recently names the subject.
        let process = dest.recent.back().and_then(|f| f.process);
        let target = endpoint((key.1, key.2));
        let who = process.map_or_else(String::new, |p| {
            format!(" from {} (pid {})", p.name(), p.pid)
        });
        let reason = match status {
            Status::Firing => format!(
                "{observed} connects to {target}{who} failed within {} s ({} refused, {timeouts} \
                 timed out): check that the service at {target} is up and that no firewall \
                 drops its SYNs",
                self.config.window_s,
                observed - timeouts,
            ),
            Status::Resolved => format!(
                "no failed connect to {target} for {} s ({} failed while firing)",
                self.config.window_s, dest.total
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
            threshold: self.config.count,
            window_s: self.config.window_s,
            evidence,
            samples: in_window
                .iter()
                .rev()
                .take(SAMPLES)
                .map(|f| f.uid)
                .collect(),
        }
    }
}
