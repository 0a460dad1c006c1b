//! `event_loss`: the observer's own loss, from the loss records the tracker writes when the
//! kernel's counters move (read every second). While it fires, connection records are missing
//! or incomplete. Resolved once a whole window passes without loss.

use std::collections::BTreeMap;

use serde_json::json;

use super::{
    Alert, Status, Subject,
    window::{self, Item, Windows},
};
use crate::track::record::{LossRecord, Losses};

pub const DEFAULT_COUNT: u64 = 1;
pub const DEFAULT_WINDOW_S: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Fires at this many lost events within the window.
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

/// Events lost outright: dropped in the ring or the kernel map, undecodable, or not kept in
/// the open-connection table. Truncated transition lists are reported as evidence only.
fn lost(l: &Losses) -> u64 {
    l.ring_full + l.map_full + l.read_failed + l.decode_errors + l.table_full
}

#[derive(Debug)]
pub struct Rule {
    config: Config,
    /// One subject, the observer itself.
    loss: Windows<(), Losses>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            loss: Windows::new(config.window_s),
        }
    }

    /// One loss record (the exit summary is not a new loss).
    pub fn loss(&mut self, l: &LossRecord, alerts: &mut Vec<Alert>) {
        if l.summary || lost(&l.delta) == 0 {
            return;
        }
        let item = Item {
            ts_ns: l.ts_ns,
            weight: lost(&l.delta),
            data: l.delta,
        };
        let window_ns = self.loss.window_ns();
        let config = &self.config;
        self.loss.push(
            (),
            item,
            |_| (config.count, 0),
            |status, at, s| {
                let mut a = alert(config, window_ns, status, at, l.events, s);
                if status == Status::Resolved {
                    a.evidence.remove("events_delivered");
                }
                alerts.push(a);
            },
        );
    }

    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = self.loss.window_ns();
        let config = &self.config;
        self.loss.tick(
            now_ns,
            |_| 0,
            |at, (), subj| {
                let mut alert = alert(config, window_ns, Status::Resolved, at, 0, subj);
                alert.evidence.remove("events_delivered");
                alerts.push(alert);
            },
        );
    }
}

fn alert(
    config: &Config,
    window_ns: u64,
    status: Status,
    ts_ns: u64,
    events: u64,
    subj: &window::Subject<Losses>,
) -> Alert {
    let mut sum = Losses::default();
    for l in subj.window.at(window_ns, ts_ns).map(|i| &i.data) {
        sum.ring_full += l.ring_full;
        sum.map_full += l.map_full;
        sum.transitions_truncated += l.transitions_truncated;
        sum.read_failed += l.read_failed;
        sum.decode_errors += l.decode_errors;
        sum.table_full += l.table_full;
    }
    let observed = lost(&sum);
    let reason = match status {
        Status::Firing => {
            let fix = if sum.ring_full > 0 {
                "raise --ring-mib"
            } else if sum.map_full + sum.table_full > 0 {
                "raise --max-connections"
            } else {
                "see the observer.loss records"
            };
            format!(
                "the observer lost {observed} events within {} s ({} ring full, {} map \
                     full, {} table full): connection records are missing; {fix}",
                config.window_s, sum.ring_full, sum.map_full, sum.table_full
            )
        }
        Status::Resolved => format!(
            "no events lost for {} s ({} lost while firing)",
            config.window_s, subj.total
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("ring_full", json!(sum.ring_full));
    evidence.insert("map_full", json!(sum.map_full));
    evidence.insert("table_full", json!(sum.table_full));
    evidence.insert("read_failed", json!(sum.read_failed));
    evidence.insert("decode_errors", json!(sum.decode_errors));
    evidence.insert("transitions_truncated", json!(sum.transitions_truncated));
    evidence.insert("total", json!(subj.total));
    evidence.insert("events_delivered", json!(events));
    Alert {
        rule: "event_loss",
        status,
        ts_ns,
        severity: 4,
        reason,
        subject: Subject::default(),
        observed,
        threshold: config.count,
        window_s: config.window_s,
        evidence,
        samples: Vec::new(),
    }
}
