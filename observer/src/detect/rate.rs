//! What the rate rules share (`connect_failures`, `event_loss`, `tls_handshake_failures`,
//! `rst_storm`, `retransmit_storm`): their configuration, their levels (a fixed count, or a
//! floor and a factor over a learnt baseline), and the feeding of `window::Windows`, so that
//! each rule's file says only what it counts and what its alert says.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Value, json};

use super::{
    Alert, SAMPLES, Status,
    window::{BASELINE_ALPHA, Item, Subject, Windows, rounded, storm_release, storm_threshold},
};
use crate::track::record::Uid;

/// A storm's subject: (netns, ip, port) of a local listener, or of a remote host with port 0.
pub type StormKey = (u32, IpAddr, u16);

/// A rule that fires at `count` items of one subject within `window_s` seconds, and resolves
/// once a whole window passes without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountConfig {
    pub count: u64,
    pub window_s: u64,
}

/// A rule against a baseline: fires when a window holds at least max(`count`, `factor` × the
/// subject's learnt mean per window); resolves when the window's sum is back to half of
/// `factor` × that mean (with no baseline, a whole window without an item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormConfig {
    /// The floor.
    pub count: u64,
    pub window_s: u64,
    pub factor: u64,
}

impl StormConfig {
    /// The firing level for a subject whose learnt mean is `mean`.
    #[must_use]
    pub fn threshold(&self, mean: f64) -> u64 {
        storm_threshold(self.count, self.factor, mean)
    }

    /// The evidence every storm alert carries: its scope, the total since it fired, the
    /// baseline and the levels; the rule adds its own.
    #[must_use]
    pub fn evidence<T>(&self, ch: &Change<StormKey, T>) -> BTreeMap<&'static str, Value> {
        let listener = ch.key.2 != 0;
        BTreeMap::from([
            ("scope", json!(if listener { "listener" } else { "remote" })),
            ("total", json!(ch.total())),
            ("baseline", json!(rounded(ch.mean()))),
            ("factor", json!(self.factor)),
            ("floor", json!(self.count)),
        ])
    }
}

#[derive(Debug, Clone, Copy)]
enum Levels {
    Fixed(u64),
    Storm(StormConfig),
}

impl Levels {
    /// (threshold, release) for a subject with this learnt mean.
    fn at(self, mean: f64) -> (u64, u64) {
        match self {
            Levels::Fixed(count) => (count, 0),
            Levels::Storm(c) => (c.threshold(mean), storm_release(c.factor, mean)),
        }
    }
}

/// A subject that fired or resolved: what its alert is built from.
#[derive(Debug)]
pub struct Change<'a, K, T> {
    pub status: Status,
    pub ts_ns: u64,
    pub key: K,
    pub subject: &'a Subject<T>,
    window_ns: u64,
}

impl<'a, K, T> Change<'a, K, T> {
    /// The items inside the window that ends at the change, oldest first.
    #[must_use]
    pub fn items(&self) -> Vec<&'a Item<T>> {
        self.subject.window.at(self.window_ns, self.ts_ns).collect()
    }

    /// The data of the items inside the window, oldest first.
    #[must_use]
    pub fn in_window(&self) -> Vec<&'a T> {
        self.subject
            .window
            .at(self.window_ns, self.ts_ns)
            .map(|i| &i.data)
            .collect()
    }

    /// The newest item's data (it names the subject's process).
    #[must_use]
    pub fn last(&self) -> Option<&'a T> {
        self.subject.window.last().map(|i| &i.data)
    }

    /// The weights counted since the subject fired.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.subject.total
    }

    /// The subject's learnt mean per window (0 without a baseline).
    #[must_use]
    pub fn mean(&self) -> f64 {
        self.subject.baseline.mean()
    }
}

/// Up to `SAMPLES` connection uids of `in_window`, newest first.
pub fn newest<T>(in_window: &[&T], uid: impl Fn(&T) -> Option<Uid>) -> Vec<Uid> {
    in_window
        .iter()
        .rev()
        .filter_map(|d| uid(d))
        .take(SAMPLES)
        .collect()
}

/// Every subject of one rate rule.
#[derive(Debug)]
pub struct Rate<K, T> {
    levels: Levels,
    windows: Windows<K, T>,
}

impl<K: Copy + Eq + std::hash::Hash + Ord, T> Rate<K, T> {
    /// A fixed threshold.
    #[must_use]
    pub fn counting(config: CountConfig) -> Self {
        Self {
            levels: Levels::Fixed(config.count),
            windows: Windows::new(config.window_s),
        }
    }

    /// A threshold over each subject's baseline.
    #[must_use]
    pub fn storm(config: StormConfig) -> Self {
        Self {
            levels: Levels::Storm(config),
            windows: Windows::new(config.window_s).with_baseline(BASELINE_ALPHA),
        }
    }

    /// Counts one item for `key`; `alert` builds the alert of each change it causes.
    pub fn push(
        &mut self,
        key: K,
        item: Item<T>,
        alert: impl Fn(&Change<K, T>) -> Alert,
        alerts: &mut Vec<Alert>,
    ) {
        let (levels, window_ns) = (self.levels, self.windows.window_ns());
        self.windows.push(
            key,
            item,
            |s| levels.at(s.baseline.mean()),
            |status, ts_ns, subject| {
                alerts.push(alert(&Change {
                    status,
                    ts_ns,
                    key,
                    subject,
                    window_ns,
                }));
            },
        );
    }

    /// Resolves the subjects whose sum fell back to their release level before `now_ns`,
    /// stamped when it fell, not when it was noticed: replay agrees.
    pub fn tick(
        &mut self,
        now_ns: u64,
        alert: impl Fn(&Change<K, T>) -> Alert,
        alerts: &mut Vec<Alert>,
    ) {
        let (levels, window_ns) = (self.levels, self.windows.window_ns());
        self.windows.tick(
            now_ns,
            |s| levels.at(s.baseline.mean()).1,
            |ts_ns, key, subject| {
                alerts.push(alert(&Change {
                    status: Status::Resolved,
                    ts_ns,
                    key: *key,
                    subject,
                    window_ns,
                }));
            },
        );
    }
}
