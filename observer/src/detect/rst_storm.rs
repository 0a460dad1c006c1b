//! `rst_storm`: a burst of connections ended by a reset, per listener (the server sockets of one
//! local port: clients aborting, or the service resetting them) or per remote host (everything
//! else: a peer refusing or aborting this host's connections). From closed connection records
//! that carried a RST either way.
//!
//! Against a baseline: each subject learns its usual count per window (an exponentially
//! weighted mean, `window::Baseline`), and fires when a window holds at least
//! max(floor, factor × baseline); resolved when the window's count is back to half of
//! factor × baseline (with no baseline, once a whole window passes without a reset).

use serde_json::json;

use super::{
    Alert, Status, Subject, endpoint,
    rate::{self, Change, Rate},
    window::{Item, rounded},
};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 20;
pub const DEFAULT_WINDOW_S: u64 = 10;
pub const DEFAULT_FACTOR: u64 = 10;

pub type Config = rate::StormConfig;

#[derive(Debug, Clone, Copy)]
struct Reset {
    uid: Uid,
    process: Option<Process>,
    sent: u32,
    received: u32,
}

type Key = rate::StormKey;

#[derive(Debug)]
pub struct Rule {
    config: Config,
    subjects: Rate<Key, Reset>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            subjects: Rate::storm(config),
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
        self.subjects
            .push(key, item, |ch| alert(&self.config, ch), alerts);
    }

    /// Resolves the subjects whose count fell back to their release level before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        self.subjects
            .tick(now_ns, |ch| alert(&self.config, ch), alerts);
    }
}

fn alert(config: &Config, ch: &Change<Key, Reset>) -> Alert {
    let key = ch.key;
    let in_window = ch.in_window();
    let sent: u64 = in_window.iter().map(|r| u64::from(r.sent)).sum();
    let received: u64 = in_window.iter().map(|r| u64::from(r.received)).sum();
    let observed = in_window.len() as u64;
    let process = ch.last().and_then(|d| d.process);
    let listener = key.2 != 0;
    let what = if listener {
        format!("connections to the listener {}", endpoint((key.1, key.2)))
    } else {
        format!("connections with {}", key.1)
    };
    let mean = ch.mean();
    let threshold = config.threshold(mean);
    let reason = match ch.status {
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
            config.window_s,
            ch.total()
        ),
        Status::Resolved => format!(
            "{what} ended by a reset are back to {observed} within {} s, near the usual {:.2} \
             ({} while firing)",
            config.window_s,
            rounded(mean),
            ch.total()
        ),
    };
    let mut evidence = config.evidence(ch);
    evidence.insert("resets_sent", json!(sent));
    evidence.insert("resets_received", json!(received));
    Alert {
        rule: "rst_storm",
        status: ch.status,
        ts_ns: ch.ts_ns,
        severity: 3,
        reason,
        subject: Subject::at(key.0, process, (key.1, key.2)),
        observed,
        threshold,
        window_s: config.window_s,
        evidence,
        samples: rate::newest(&in_window, |r| Some(r.uid)),
    }
}
