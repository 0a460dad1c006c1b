//! `retransmit_storm`: segments retransmitted in a burst, per listener (the server sockets of
//! one local port) or per remote host (every other socket with it), naming the process. Loss
//! or congestion on the path, a peer that stopped reading, a flapping link: the service slows
//! down long before anything fails.
//!
//! From connection records (closed ones, and the `update` records of open ones, so a long
//! transfer counts while it runs): the data retransmits (`tcp.retransmits_data`) since the
//! socket's previous record. SYN retransmits belong to `connect_failures`, SYN-ACK retransmits
//! to the listener rules.
//!
//! Against a baseline like `rst_storm`: fires when a window holds at least
//! max(floor, factor × the subject's learnt mean per window); resolved when the window's count
//! is back to half of factor × baseline (with no baseline, a whole window without one).

use std::collections::HashMap;

use serde_json::json;

use super::{
    Alert, SAMPLES, Status, Subject, endpoint,
    rate::{self, Change, Rate},
    window::{Item, rounded},
};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 50;
pub const DEFAULT_WINDOW_S: u64 = 10;
pub const DEFAULT_FACTOR: u64 = 10;

pub type Config = rate::StormConfig;

#[derive(Debug, Clone, Copy)]
struct Retrans {
    uid: Uid,
    process: Option<Process>,
    /// Segments this socket sent since its previous record (retransmits included).
    sent: u64,
}

type Key = rate::StormKey;

#[derive(Debug)]
pub struct Rule {
    config: Config,
    subjects: Rate<Key, Retrans>,
    /// Per open socket (cookie) that had an update record: its data retransmits and segments
    /// sent as of that record.
    seen: HashMap<u64, (u32, u32)>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            subjects: Rate::storm(config),
            seen: HashMap::new(),
        }
    }

    /// One connection record: its data retransmits since the socket's previous record count.
    pub fn record(&mut self, c: &ConnRecord, alerts: &mut Vec<Alert>) {
        let sent_now = if c.role == Role::Server {
            c.destination.packets
        } else {
            c.source.packets
        };
        let (before, sent_before) = match c.kind {
            RecordKind::Closed => self.seen.remove(&c.cookie).unwrap_or_default(),
            RecordKind::Update => self
                .seen
                .insert(c.cookie, (c.retransmits.data, sent_now))
                .unwrap_or_default(),
            // The life so far of what is open at exit: not news.
            RecordKind::Shutdown => return,
        };
        let retransmits = c.retransmits.data.saturating_sub(before);
        if retransmits == 0 {
            return;
        }
        let key = if c.role == Role::Server {
            (c.netns, c.destination.ip, c.destination.port)
        } else {
            (c.netns, c.destination.ip, 0)
        };
        let item = Item {
            ts_ns: c.end_ns,
            weight: u64::from(retransmits),
            data: Retrans {
                uid: c.uid,
                process: c.process,
                sent: u64::from(sent_now.saturating_sub(sent_before)),
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

fn alert(config: &Config, ch: &Change<Key, Retrans>) -> Alert {
    let key = ch.key;
    let in_window = ch.items();
    let observed: u64 = in_window.iter().map(|i| i.weight).sum();
    let sent: u64 = in_window.iter().map(|i| i.data.sent).sum();
    let mut conns: Vec<Uid> = in_window.iter().map(|i| i.data.uid).collect();
    conns.sort_unstable_by_key(|u| u.0);
    conns.dedup();
    let process = ch.last().and_then(|d| d.process);
    let mean = ch.mean();
    let threshold = config.threshold(mean);
    let listener = key.2 != 0;
    let what = if listener {
        format!("the listener {}", endpoint((key.1, key.2)))
    } else {
        format!("connections with {}", key.1)
    };
    let who = process.map_or_else(String::new, |p| format!(" ({} pid {})", p.name(), p.pid));
    let reason = match ch.status {
        Status::Firing => format!(
            "{what}{who} retransmitted {observed} segments within {} s ({} connections, \
             {sent} segments sent; usually {:.2} retransmits per {} s): check the path to {} \
             for loss or congestion, and whether the peer still reads",
            config.window_s,
            conns.len(),
            rounded(mean),
            config.window_s,
            key.1,
        ),
        Status::Resolved => format!(
            "{what} retransmitted {observed} segments within the last {} s, back to normal \
             ({} while firing)",
            config.window_s,
            ch.total()
        ),
    };
    let mut evidence = config.evidence(ch);
    evidence.insert("connections", json!(conns.len()));
    evidence.insert("segments_sent", json!(sent));
    Alert {
        rule: "retransmit_storm",
        status: ch.status,
        ts_ns: ch.ts_ns,
        severity: 3,
        reason,
        subject: Subject::at(key.0, process, (key.1, key.2)),
        observed,
        threshold,
        window_s: config.window_s,
        evidence,
        samples: newest_first(&in_window),
    }
}

/// Up to `SAMPLES` distinct connections, newest first (a connection with update records can
/// count more than once).
fn newest_first(items: &[&Item<Retrans>]) -> Vec<Uid> {
    let mut out: Vec<Uid> = Vec::new();
    for i in items.iter().rev() {
        if out.len() == SAMPLES {
            break;
        }
        if !out.contains(&i.data.uid) {
            out.push(i.data.uid);
        }
    }
    out
}
