//! `rst_storm`: a burst of connections ended by a reset, per listener (the server sockets of one
//! local port: clients aborting, or the service resetting them) or per remote host (everything
//! else: a peer refusing or aborting this host's connections). From closed connection records
//! that carried a RST either way.
//!
//! Against a baseline: each subject learns its usual count per window (an exponentially
//! weighted mean, `window::Baseline`), and fires when a window holds at least
//! max(floor, factor × baseline); resolved when the window's count is back to half of
//! factor × baseline (with no baseline, once a whole window passes without a reset).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::{
    Alert, SAMPLES, Status, Subject, endpoint,
    window::{self, BASELINE_ALPHA, Item, Windows, rounded, storm_release, storm_threshold},
};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 20;
pub const DEFAULT_WINDOW_S: u64 = 10;
pub const DEFAULT_FACTOR: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The floor: fires at no fewer than this many reset connections of one subject within
    /// the window.
    pub count: u64,
    pub window_s: u64,
    /// Fires at this many times the subject's baseline (its learnt mean per window), when that
    /// is above the floor.
    pub factor: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            window_s: DEFAULT_WINDOW_S,
            factor: DEFAULT_FACTOR,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Reset {
    uid: Uid,
    process: Option<Process>,
    sent: u32,
    received: u32,
}

/// (netns, ip, port): a local listener, or a remote host with port 0.
type Key = (u32, IpAddr, u16);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    subjects: Windows<Key, Reset>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            subjects: Windows::new(config.window_s).with_baseline(BASELINE_ALPHA),
        }
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
        let item = Item {
            ts_ns: c.end_ns,
            weight: 1,
            data: Reset {
                uid: c.uid,
                process: c.process,
                sent: c.resets_sent,
                received: c.resets_received,
            },
        };
        let window_ns = self.subjects.window_ns();
        let config = &self.config;
        self.subjects.push(
            key,
            item,
            |s| {
                (
                    storm_threshold(config.count, config.factor, s.baseline.mean()),
                    storm_release(config.factor, s.baseline.mean()),
                )
            },
            |status, at, s| {
                alerts.push(alert(config, window_ns, status, at, key, s));
            },
        );
    }

    /// Resolves the subjects whose count fell back to their release level before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = self.subjects.window_ns();
        let config = &self.config;
        self.subjects.tick(
            now_ns,
            |s| storm_release(config.factor, s.baseline.mean()),
            |at, key, subj| alerts.push(alert(config, window_ns, Status::Resolved, at, *key, subj)),
        );
    }
}

fn alert(
    config: &Config,
    window_ns: u64,
    status: Status,
    ts_ns: u64,
    key: Key,
    subj: &window::Subject<Reset>,
) -> Alert {
    let in_window: Vec<&Reset> = subj.window.at(window_ns, ts_ns).map(|i| &i.data).collect();
    let sent: u64 = in_window.iter().map(|r| u64::from(r.sent)).sum();
    let received: u64 = in_window.iter().map(|r| u64::from(r.received)).sum();
    let observed = in_window.len() as u64;
    let process = subj.window.last().and_then(|i| i.data.process);
    let listener = key.2 != 0;
    let what = if listener {
        format!("connections to the listener {}", endpoint((key.1, key.2)))
    } else {
        format!("connections with {}", key.1)
    };
    let mean = subj.baseline.mean();
    let threshold = storm_threshold(config.count, config.factor, mean);
    let reason = match status {
        Status::Firing => format!(
            "{observed} {what} ended by a reset within {} s ({sent} RST sent, {received} \
                 received; usually {:.2} per {} s): {}",
            config.window_s,
            rounded(mean),
            config.window_s,
            if listener {
                "check whether the service aborts connections or its clients give up"
            } else {
                "check whether that host refuses or aborts this host's connections"
            }
        ),
        Status::Resolved if observed == 0 => format!(
            "no {what} ended by a reset for {} s ({} while firing)",
            config.window_s, subj.total
        ),
        Status::Resolved => format!(
            "{what} ended by a reset are back to {observed} within {} s, near the usual {:.2} \
             ({} while firing)",
            config.window_s,
            rounded(mean),
            subj.total
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("scope", json!(if listener { "listener" } else { "remote" }));
    evidence.insert("resets_sent", json!(sent));
    evidence.insert("resets_received", json!(received));
    evidence.insert("total", json!(subj.total));
    evidence.insert("baseline", json!(rounded(mean)));
    evidence.insert("factor", json!(config.factor));
    evidence.insert("floor", json!(config.count));
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
        threshold,
        window_s: config.window_s,
        evidence,
        samples: in_window
            .iter()
            .rev()
            .take(SAMPLES)
            .map(|r| r.uid)
            .collect(),
    }
}
