//! `event_loss`: the observer's own loss, from the loss records the tracker writes when the
//! kernel's counters move (read every second). While it fires, connection records are missing
//! or incomplete. Resolved once a whole window passes without loss.

use std::collections::{BTreeMap, VecDeque};

use serde_json::json;

use super::{Alert, NS, Status, Subject};
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
    recent: VecDeque<(u64, Losses)>,
    firing: bool,
    /// Lost since it fired.
    total: u64,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            recent: VecDeque::new(),
            firing: false,
            total: 0,
        }
    }

    fn window_ns(&self) -> u64 {
        self.config.window_s.saturating_mul(NS)
    }

    fn prune(&mut self, now_ns: u64) {
        let window_ns = self.window_ns();
        while self
            .recent
            .front()
            .is_some_and(|(ts, _)| ts.saturating_add(window_ns) <= now_ns)
        {
            self.recent.pop_front();
        }
    }

    fn observed(&self) -> u64 {
        self.recent.iter().map(|(_, l)| lost(l)).sum()
    }

    /// One loss record (the exit summary is not a new loss).
    pub fn loss(&mut self, l: &LossRecord, alerts: &mut Vec<Alert>) {
        if l.summary || lost(&l.delta) == 0 {
            return;
        }
        self.recent.push_back((l.ts_ns, l.delta));
        self.prune(l.ts_ns);
        if self.firing {
            self.total += lost(&l.delta);
        } else if self.observed() >= self.config.count {
            self.firing = true;
            self.total = self.observed();
            alerts.push(self.alert(Status::Firing, l.ts_ns, l.events));
        }
    }

    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let Some(&(last, _)) = self.recent.back() else {
            return;
        };
        let end = last.saturating_add(self.window_ns());
        if end > now_ns {
            return;
        }
        if self.firing {
            self.firing = false;
            let mut alert = self.alert(Status::Resolved, end, 0);
            alert.evidence.remove("events_delivered");
            alerts.push(alert);
        }
        self.recent.clear();
    }

    fn alert(&self, status: Status, ts_ns: u64, events: u64) -> Alert {
        let window_ns = self.window_ns();
        let mut sum = Losses::default();
        for (_, l) in self
            .recent
            .iter()
            .filter(|(ts, _)| ts.saturating_add(window_ns) > ts_ns)
        {
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
                    self.config.window_s, sum.ring_full, sum.map_full, sum.table_full
                )
            }
            Status::Resolved => format!(
                "no events lost for {} s ({} lost while firing)",
                self.config.window_s, self.total
            ),
        };
        let mut evidence = BTreeMap::new();
        evidence.insert("ring_full", json!(sum.ring_full));
        evidence.insert("map_full", json!(sum.map_full));
        evidence.insert("table_full", json!(sum.table_full));
        evidence.insert("read_failed", json!(sum.read_failed));
        evidence.insert("decode_errors", json!(sum.decode_errors));
        evidence.insert("transitions_truncated", json!(sum.transitions_truncated));
        evidence.insert("total", json!(self.total));
        evidence.insert("events_delivered", json!(events));
        Alert {
            rule: "event_loss",
            status,
            ts_ns,
            severity: 4,
            reason,
            subject: Subject::default(),
            observed,
            threshold: self.config.count,
            window_s: self.config.window_s,
            evidence,
            samples: Vec::new(),
        }
    }
}
