//! `rst_storm`: a burst of connections ended by a reset, per listener (the server sockets of one
//! local port: clients aborting, or the service resetting them) or per remote host (everything
//! else: a peer refusing or aborting this host's connections). From closed connection records
//! that carried a RST either way. Resolved once a whole window passes without one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::json;

use super::{Alert, NS, SAMPLES, Status, Subject, endpoint};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 20;
pub const DEFAULT_WINDOW_S: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Fires at this many reset connections of one subject within the window.
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
struct Reset {
    end_ns: u64,
    uid: Uid,
    process: Option<Process>,
    sent: u32,
    received: u32,
}

#[derive(Debug, Default)]
struct Subj {
    recent: VecDeque<Reset>,
    firing: bool,
    total: u64,
}

/// (netns, ip, port): a local listener, or a remote host with port 0.
type Key = (u32, IpAddr, u16);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    subjects: HashMap<Key, Subj>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            subjects: HashMap::new(),
        }
    }

    fn window_ns(&self) -> u64 {
        self.config.window_s.saturating_mul(NS)
    }

    /// One connection record: counted when it closed with a RST sent or received.
    pub fn record(&mut self, c: &ConnRecord, alerts: &mut Vec<Alert>) {
        if c.kind != RecordKind::Closed || c.resets_sent + c.resets_received == 0 {
            return;
        }
        // Server records read source = the client, destination = this listener.
        let key = if c.role == Role::Server {
            (c.netns, c.destination.ip, c.destination.port)
        } else {
            (c.netns, c.destination.ip, 0)
        };
        let window_ns = self.window_ns();
        let threshold = self.config.count;
        let subj = self.subjects.entry(key).or_default();
        subj.recent.push_back(Reset {
            end_ns: c.end_ns,
            uid: c.uid,
            process: c.process,
            sent: c.resets_sent,
            received: c.resets_received,
        });
        while subj
            .recent
            .front()
            .is_some_and(|r| r.end_ns.saturating_add(window_ns) <= c.end_ns)
        {
            subj.recent.pop_front();
        }
        if subj.firing {
            subj.total += 1;
        } else if subj.recent.len() as u64 >= threshold {
            subj.firing = true;
            subj.total = subj.recent.len() as u64;
            let alert = self.alert(Status::Firing, c.end_ns, key);
            alerts.push(alert);
        }
    }

    /// Resolves the subjects without a reset for a whole window before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = self.window_ns();
        let mut quiet: Vec<(u64, Key)> = self
            .subjects
            .iter()
            .filter_map(|(key, s)| {
                let end = s
                    .recent
                    .back()
                    .map_or(0, |r| r.end_ns)
                    .saturating_add(window_ns);
                (end <= now_ns).then_some((end, *key))
            })
            .collect();
        quiet.sort_unstable();
        for (end, key) in quiet {
            if self.subjects.get(&key).is_some_and(|s| s.firing) {
                let alert = self.alert(Status::Resolved, end, key);
                alerts.push(alert);
            }
            self.subjects.remove(&key);
        }
    }

    fn alert(&self, status: Status, ts_ns: u64, key: Key) -> Alert {
        let subj = &self.subjects[&key];
        let window_ns = self.window_ns();
        let in_window: Vec<&Reset> = subj
            .recent
            .iter()
            .filter(|r| r.end_ns.saturating_add(window_ns) > ts_ns)
            .collect();
        let sent: u64 = in_window.iter().map(|r| u64::from(r.sent)).sum();
        let received: u64 = in_window.iter().map(|r| u64::from(r.received)).sum();
        let observed = in_window.len() as u64;
        let process = subj.recent.back().and_then(|r| r.process);
        let listener = key.2 != 0;
        let what = if listener {
            format!("connections to the listener {}", endpoint((key.1, key.2)))
        } else {
            format!("connections with {}", key.1)
        };
        let reason = match status {
            Status::Firing => format!(
                "{observed} {what} ended by a reset within {} s ({sent} RST sent, {received} \
                 received): {}",
                self.config.window_s,
                if listener {
                    "check whether the service aborts connections or its clients give up"
                } else {
                    "check whether that host refuses or aborts this host's connections"
                }
            ),
            Status::Resolved => format!(
                "no {what} ended by a reset for {} s ({} while firing)",
                self.config.window_s, subj.total
            ),
        };
        let mut evidence = BTreeMap::new();
        evidence.insert("scope", json!(if listener { "listener" } else { "remote" }));
        evidence.insert("resets_sent", json!(sent));
        evidence.insert("resets_received", json!(received));
        evidence.insert("total", json!(subj.total));
        Alert {
            rule: "rst_storm",
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
                .map(|r| r.uid)
                .collect(),
        }
    }
}
