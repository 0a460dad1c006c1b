//! `event_loss`: the observer's own loss, from the loss records the tracker writes when the
//! kernel's counters move (read every second). While it fires, connection records are missing
//! or incomplete. Fires at `count` lost events within the window; resolved once a whole window
//! passes without loss.

use std::collections::BTreeMap;

use serde_json::json;

use super::{
    Alert, Status, Subject,
    rate::{self, Change, Rate},
    window::Item,
};
use crate::track::record::{LossRecord, Losses};

pub const DEFAULT_COUNT: u64 = 1;
pub const DEFAULT_WINDOW_S: u64 = 10;

pub type Config = rate::CountConfig;

/// Events lost outright: dropped in the ring or the kernel map, never seen because the kernel
/// skipped a hook, undecodable, or not kept in the open-connection table. Truncated transition
/// lists are reported as evidence only.
fn lost(l: &Losses) -> u64 {
    l.ring_full + l.map_full + l.recursion_misses + l.read_failed + l.decode_errors + l.table_full
}

#[derive(Debug)]
pub struct Rule {
    config: Config,
    /// One subject, the observer itself.
    loss: Rate<(), Losses>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            loss: Rate::counting(config),
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
        self.loss
            .push((), item, |ch| alert(&self.config, ch, l.events), alerts);
    }

    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        self.loss
            .tick(now_ns, |ch| alert(&self.config, ch, 0), alerts);
    }
}

/// `events`: the events delivered so far, named while firing.
fn alert(config: &Config, ch: &Change<(), Losses>, events: u64) -> Alert {
    let sum = ch
        .in_window()
        .into_iter()
        .fold(Losses::default(), |sum, l| sum.plus(l));
    let observed = lost(&sum);
    let reason = match ch.status {
        Status::Firing => {
            let fix = if sum.ring_full > 0 {
                "raise --ring-mib"
            } else if sum.map_full + sum.table_full > 0 {
                "raise --max-connections"
            } else if sum.recursion_misses > 0 {
                "the kernel skipped hooks interrupted on their CPU (docs/kernels.md)"
            } else {
                "see the observer.loss records"
            };
            format!(
                "the observer lost {observed} events within {} s ({} ring full, {} map \
                     full, {} table full, {} hook runs skipped): connection records are \
                     missing; {fix}",
                config.window_s, sum.ring_full, sum.map_full, sum.table_full, sum.recursion_misses
            )
        }
        Status::Resolved => format!(
            "no events lost for {} s ({} lost while firing)",
            config.window_s,
            ch.total()
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("ring_full", json!(sum.ring_full));
    evidence.insert("map_full", json!(sum.map_full));
    evidence.insert("table_full", json!(sum.table_full));
    evidence.insert("recursion_misses", json!(sum.recursion_misses));
    evidence.insert("read_failed", json!(sum.read_failed));
    evidence.insert("decode_errors", json!(sum.decode_errors));
    evidence.insert("transitions_truncated", json!(sum.transitions_truncated));
    evidence.insert("total", json!(ch.total()));
    if ch.status == Status::Firing {
        evidence.insert("events_delivered", json!(events));
    }
    Alert {
        rule: "event_loss",
        status: ch.status,
        ts_ns: ch.ts_ns,
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
