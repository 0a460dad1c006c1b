//! The sliding-window count with hysteresis that the rate rules share (`connect_failures`,
//! `rst_storm`, `retransmit_storm`, `event_loss`, …).
//!
//! Per subject: the items of the last `window` seconds, each with a weight (1 per failed
//! connect, the events lost in one loss record, the segments retransmitted by one connection).
//! A subject fires once when the window's sum reaches its threshold and stays firing while
//! items keep coming; it resolves when the window's sum has fallen to its release level (0:
//! a whole window without an item), stamped with the moment that happened (the expiry of the
//! item that held it above), not the moment a tick noticed it. A subject with nothing left in
//! its window and nothing learnt is forgotten.
//!
//! Optionally each subject learns a baseline: an exponentially weighted mean of its sums over
//! consecutive windows ("epochs", aligned on its first item), frozen while it fires so a storm
//! does not teach itself to be normal.
//!
//! Pure: time comes only from the items' timestamps and the `now_ns` of each tick.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

use super::{NS, Status};

/// One counted occurrence.
#[derive(Debug, Clone, Copy)]
pub struct Item<T> {
    pub ts_ns: u64,
    pub weight: u64,
    pub data: T,
}

/// The items of one subject, oldest first (in arrival order).
#[derive(Debug)]
pub struct Window<T> {
    items: VecDeque<Item<T>>,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
        }
    }
}

impl<T> Window<T> {
    /// Adds an item and drops those that fell out of the window before it.
    pub fn push(&mut self, window_ns: u64, item: Item<T>) {
        let now = item.ts_ns;
        self.items.push_back(item);
        while self
            .items
            .front()
            .is_some_and(|i| i.ts_ns.saturating_add(window_ns) <= now)
        {
            self.items.pop_front();
        }
    }

    /// The items inside the window that ends at `t`: (t - window, t].
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn at(&self, window_ns: u64, t: u64) -> impl DoubleEndedIterator<Item = &Item<T>> {
        self.items
            .iter()
            .filter(move |i| i.ts_ns.saturating_add(window_ns) > t && i.ts_ns <= t)
    }

    /// The sum of the weights inside the window at `t`.
    #[must_use]
    pub fn sum_at(&self, window_ns: u64, t: u64) -> u64 {
        self.at(window_ns, t).map(|i| i.weight).sum()
    }

    /// The newest item.
    #[must_use]
    pub fn last(&self) -> Option<&Item<T>> {
        self.items.back()
    }

    /// When the window's sum falls to `release` or below, as far as these items go: the
    /// expiry of the newest item that keeps it above (0 if nothing does).
    #[must_use]
    pub fn clears_at(&self, window_ns: u64, release: u64) -> u64 {
        let mut sum = 0u64;
        for i in self.items.iter().rev() {
            sum = sum.saturating_add(i.weight);
            if sum > release {
                return i.ts_ns.saturating_add(window_ns);
            }
        }
        0
    }
}

/// An exponentially weighted mean of a subject's sums per window-long epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    /// The current epoch's start; `None` before the first item.
    start: Option<u64>,
    /// The sum in the current epoch so far.
    count: u64,
    mean: f64,
    /// While frozen, epochs pass without being learnt.
    frozen: bool,
}

impl Baseline {
    /// Closes the epochs that ended by `t`: each folds its sum into the mean with weight
    /// `alpha` (an empty epoch decays it), unless frozen.
    pub fn advance(&mut self, epoch_ns: u64, alpha: f64, t: u64) {
        let Some(start) = self.start else {
            return;
        };
        if epoch_ns == 0 || t < start.saturating_add(epoch_ns) {
            return;
        }
        let n = (t - start) / epoch_ns;
        if !self.frozen {
            // The current epoch, then n - 1 empty ones.
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let count = self.count as f64;
            self.mean = alpha * count + (1.0 - alpha) * self.mean;
            let empty = i32::try_from(n - 1).unwrap_or(i32::MAX);
            self.mean *= (1.0 - alpha).powi(empty);
        }
        self.count = 0;
        self.start = Some(start + n * epoch_ns);
    }

    /// Counts `weight` at `t` into the current epoch (nothing while frozen).
    pub fn add(&mut self, epoch_ns: u64, alpha: f64, t: u64, weight: u64) {
        if self.start.is_none() {
            self.start = Some(t);
        }
        self.advance(epoch_ns, alpha, t);
        if !self.frozen {
            self.count = self.count.saturating_add(weight);
        }
    }

    /// Stops learning (the subject fires); the current epoch is discarded.
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.count = 0;
    }

    /// Learns again from `t` (the subject resolved), in a fresh epoch.
    pub fn thaw(&mut self, t: u64) {
        self.frozen = false;
        self.count = 0;
        if self.start.is_some() {
            self.start = Some(t);
        }
    }

    /// The learnt mean sum per window.
    #[must_use]
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Nothing worth keeping: no mean to speak of and nothing in the current epoch.
    #[must_use]
    pub fn negligible(&self) -> bool {
        self.mean < 0.01 && self.count == 0
    }
}

/// How much of each new epoch a baseline learns: 0.2 remembers about five windows (50 s with
/// the default 10 s windows, like netdata's one-minute average behind its RST alarm).
pub const BASELINE_ALPHA: f64 = 0.2;

/// The firing level of a rate rule with a baseline: `factor` × the learnt mean per window,
/// rounded up, and never below `floor`.
#[must_use]
pub fn storm_threshold(floor: u64, factor: u64, mean: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a non-negative mean of small counts"
    )]
    let learnt = (factor as f64 * mean).ceil() as u64;
    floor.max(learnt)
}

/// The release level of a rate rule with a baseline: half of `factor` × the learnt mean,
/// rounded down; 0 (a whole window without an item) while nothing was learnt.
#[must_use]
pub fn storm_release(factor: u64, mean: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a non-negative mean of small counts"
    )]
    let release = (factor as f64 * mean / 2.0).floor() as u64;
    release
}

/// A mean for an alert line: two decimals.
#[must_use]
pub fn rounded(mean: f64) -> f64 {
    (mean * 100.0).round() / 100.0
}

/// One subject's window and hysteresis state.
#[derive(Debug)]
pub struct Subject<T> {
    pub window: Window<T>,
    pub firing: bool,
    /// When it last fired.
    pub fired_ns: u64,
    /// The weights counted since it fired.
    pub total: u64,
    pub baseline: Baseline,
}

impl<T> Default for Subject<T> {
    fn default() -> Self {
        Self {
            window: Window::default(),
            firing: false,
            fired_ns: 0,
            total: 0,
            baseline: Baseline::default(),
        }
    }
}

impl<T> Subject<T> {
    /// When a firing subject's sum falls to `release`: never before it fired.
    fn clears_at(&self, window_ns: u64, release: u64) -> u64 {
        self.window.clears_at(window_ns, release).max(self.fired_ns)
    }

    fn resolve(&mut self, at: u64) {
        self.firing = false;
        self.total = 0;
        self.baseline.thaw(at);
    }
}

/// Every subject of one rule.
#[derive(Debug)]
pub struct Windows<K, T> {
    window_ns: u64,
    /// `Some(alpha)` when the subjects learn a baseline.
    alpha: Option<f64>,
    subjects: HashMap<K, Subject<T>>,
}

impl<K: Copy + Eq + Hash + Ord, T> Windows<K, T> {
    #[must_use]
    pub fn new(window_s: u64) -> Self {
        Self {
            window_ns: window_s.saturating_mul(NS),
            alpha: None,
            subjects: HashMap::new(),
        }
    }

    /// Subjects learn a baseline, with this weight per epoch.
    #[must_use]
    pub fn with_baseline(mut self, alpha: f64) -> Self {
        self.alpha = Some(alpha);
        self
    }

    #[must_use]
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    #[must_use]
    pub fn get(&self, key: &K) -> Option<&Subject<T>> {
        self.subjects.get(key)
    }

    /// Counts one item for `key`. `levels` gives the subject's (threshold, release) levels
    /// (from its baseline, if it has one), asked before the item counts. `change` hears of a
    /// resolve the item shows happened before it (no tick came in between), then of the
    /// firing this item causes.
    pub fn push(
        &mut self,
        key: K,
        item: Item<T>,
        levels: impl Fn(&Subject<T>) -> (u64, u64),
        mut change: impl FnMut(Status, u64, &Subject<T>),
    ) {
        let window_ns = self.window_ns;
        let subj = self.subjects.entry(key).or_default();
        let (ts, weight) = (item.ts_ns, item.weight);
        if subj.firing {
            let at = subj.clears_at(window_ns, levels(subj).1);
            if at <= ts {
                change(Status::Resolved, at, subj);
                subj.resolve(at);
            }
        }
        if let Some(alpha) = self.alpha {
            subj.baseline.advance(window_ns, alpha, ts);
        }
        let threshold = levels(subj).0;
        if let Some(alpha) = self.alpha {
            subj.baseline.add(window_ns, alpha, ts, weight);
        }
        subj.window.push(window_ns, item);
        if subj.firing {
            subj.total = subj.total.saturating_add(weight);
            return;
        }
        let sum = subj.window.sum_at(window_ns, ts);
        if sum < threshold {
            return;
        }
        subj.firing = true;
        subj.fired_ns = ts;
        subj.total = sum;
        subj.baseline.freeze();
        change(Status::Firing, ts, subj);
    }

    /// Time passed up to `now_ns`. A firing subject whose window sum fell to its release
    /// level by then resolves: `resolved(ts, key, subject)` is called with the moment it fell,
    /// in time order. Subjects with an empty window and no baseline are then forgotten.
    pub fn tick(
        &mut self,
        now_ns: u64,
        release: impl Fn(&Subject<T>) -> u64,
        mut resolved: impl FnMut(u64, &K, &Subject<T>),
    ) {
        let window_ns = self.window_ns;
        let mut due: Vec<(u64, K)> = self
            .subjects
            .iter()
            .filter(|(_, s)| s.firing)
            .filter_map(|(k, s)| {
                let at = s.clears_at(window_ns, release(s));
                (at <= now_ns).then_some((at, *k))
            })
            .collect();
        due.sort_unstable();
        for (at, key) in due {
            if let Some(subj) = self.subjects.get_mut(&key) {
                resolved(at, &key, subj);
                subj.resolve(at);
            }
        }
        let alpha = self.alpha;
        self.subjects.retain(|_, s| {
            if let Some(alpha) = alpha {
                s.baseline.advance(window_ns, alpha, now_ns);
            }
            let quiet = s
                .window
                .last()
                .is_none_or(|i| i.ts_ns.saturating_add(window_ns) <= now_ns);
            !(quiet && !s.firing && s.baseline.negligible())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS;

    fn item(t_s: u64, weight: u64) -> Item<u8> {
        Item {
            ts_ns: t_s * S,
            weight,
            data: 0,
        }
    }

    /// (time in s, weight) pushes and (time in s) ticks.
    enum Step {
        P(u64, u64),
        T(u64),
    }

    /// Runs a stream for one subject against a fixed threshold and release, and returns
    /// ("fire"/"resolve", time in s, total at that moment).
    fn run(
        window_s: u64,
        threshold: u64,
        release: u64,
        steps: &[Step],
    ) -> Vec<(&'static str, u64, u64)> {
        let mut w: Windows<u8, u8> = Windows::new(window_s);
        let mut out = Vec::new();
        for step in steps {
            match *step {
                Step::P(t, weight) => w.push(
                    1,
                    item(t, weight),
                    |_| (threshold, release),
                    |status, at, s| {
                        let what = if status == Status::Firing {
                            "fire"
                        } else {
                            "resolve"
                        };
                        out.push((what, at / S, s.total));
                    },
                ),
                Step::T(t) => w.tick(
                    t * S,
                    |_| release,
                    |at, _, s| out.push(("resolve", at / S, s.total)),
                ),
            }
        }
        out
    }

    /// (name, window in s, threshold, release, the stream, what it must give).
    type Case = (
        &'static str,
        u64,
        u64,
        u64,
        &'static [Step],
        &'static [(&'static str, u64, u64)],
    );

    #[test]
    #[expect(clippy::too_many_lines, reason = "a table of cases")]
    fn fires_at_the_threshold_holds_and_resolves_after_the_quiet_window() {
        use Step::{P, T};
        let cases: &[Case] = &[
            (
                "below the threshold: nothing",
                10,
                3,
                0,
                &[P(1, 1), P(2, 1), T(30)],
                &[],
            ),
            (
                "spread over more than a window: nothing",
                10,
                3,
                0,
                &[P(1, 1), P(8, 1), P(12, 1), T(30)],
                &[],
            ),
            (
                "fires once, holds, resolves a window after the last",
                10,
                3,
                0,
                &[
                    P(1, 1),
                    P(2, 1),
                    P(6, 1),
                    P(9, 1),
                    T(15),
                    P(16, 1),
                    T(25),
                    T(27),
                    T(40),
                ],
                &[("fire", 6, 3), ("resolve", 26, 5)],
            ),
            (
                "weights: one heavy item fires alone",
                5,
                10,
                0,
                &[P(1, 4), P(3, 4), P(4, 4), P(6, 1), T(11), T(20)],
                &[("fire", 4, 12), ("resolve", 11, 13)],
            ),
            (
                "a late tick stamps the resolve when the window cleared",
                10,
                2,
                0,
                &[P(1, 1), P(2, 1), T(100)],
                &[("fire", 2, 2), ("resolve", 12, 2)],
            ),
            (
                "a release level: resolved when the sum falls to it, not to 0",
                10,
                4,
                1,
                &[P(1, 1), P(2, 1), P(3, 1), P(4, 1), T(13), T(14), T(30)],
                &[("fire", 4, 4), ("resolve", 13, 4)],
            ),
            (
                "no flapping: it holds while items keep the window busy",
                2,
                2,
                0,
                &[
                    P(1, 1),
                    P(2, 1),
                    T(3),
                    P(3, 1),
                    T(4),
                    P(4, 1),
                    T(5),
                    P(5, 1),
                    T(6),
                    T(7),
                    T(8),
                ],
                &[("fire", 2, 2), ("resolve", 7, 5)],
            ),
            (
                "no tick in between: the next item resolves the first burst before it counts",
                10,
                2,
                0,
                &[P(1, 1), P(2, 1), P(30, 1), P(31, 1), T(50)],
                &[
                    ("fire", 2, 2),
                    ("resolve", 12, 2),
                    ("fire", 31, 2),
                    ("resolve", 41, 2),
                ],
            ),
            (
                "a burst, a quiet window, a burst: two firings",
                10,
                3,
                0,
                &[
                    P(1, 1),
                    P(1, 1),
                    P(1, 1),
                    T(12),
                    P(20, 1),
                    P(20, 1),
                    P(20, 1),
                    T(31),
                ],
                &[
                    ("fire", 1, 3),
                    ("resolve", 11, 3),
                    ("fire", 20, 3),
                    ("resolve", 30, 3),
                ],
            ),
        ];
        for (name, window_s, threshold, release, steps, want) in cases {
            assert_eq!(run(*window_s, *threshold, *release, steps), *want, "{name}");
        }
    }

    #[test]
    fn resolves_in_time_order_and_forgets_quiet_subjects() {
        let mut w: Windows<u8, u8> = Windows::new(5);
        for (key, t) in [(2, 3), (2, 3), (1, 4), (1, 4)] {
            w.push(key, item(t, 1), |_| (2, 0), |_, _, _| {});
        }
        let mut out = Vec::new();
        w.tick(20 * S, |_| 0, |at, k, _| out.push((at / S, *k)));
        assert_eq!(out, [(8, 2), (9, 1)]);
        assert!(w.get(&1).is_none() && w.get(&2).is_none());
    }

    #[test]
    fn storm_levels_from_floor_factor_and_baseline() {
        // (floor, factor, mean) → (threshold, release)
        let cases = [
            ((20, 10, 0.0), (20, 0)),
            ((20, 10, 0.3), (20, 1)),
            ((20, 10, 1.99), (20, 9)),
            ((20, 10, 2.01), (21, 10)),
            ((20, 10, 7.5), (75, 37)),
            ((5, 3, 4.0), (12, 6)),
        ];
        for ((floor, factor, mean), want) in cases {
            assert_eq!(
                (
                    storm_threshold(floor, factor, mean),
                    storm_release(factor, mean)
                ),
                want,
                "floor {floor} factor {factor} mean {mean}"
            );
        }
    }

    #[test]
    fn clears_at_counts_back_from_the_newest() {
        let mut w: Window<u8> = Window::default();
        for t in [1, 2, 3] {
            w.push(100 * S, item(t, 2));
        }
        // Sums from the newest: 2, 4, 6.
        assert_eq!(w.clears_at(10 * S, 0), 13 * S);
        assert_eq!(w.clears_at(10 * S, 2), 12 * S);
        assert_eq!(w.clears_at(10 * S, 5), 11 * S);
        assert_eq!(w.clears_at(10 * S, 6), 0);
    }

    #[test]
    fn the_baseline_learns_per_epoch_decays_and_freezes() {
        let (e, a) = (10 * S, 0.5);
        let mut b = Baseline::default();
        // Epoch [0, 10): 4; [10, 20): 2.
        for t in [0, 1, 2, 3, 11, 12] {
            b.add(e, a, t * S, 1);
        }
        b.advance(e, a, 20 * S);
        // 0.5 * 4 = 2, then 0.5 * 2 + 0.5 * 2 = 2.
        assert!((b.mean() - 2.0).abs() < 1e-9, "{}", b.mean());
        // Two empty epochs halve it twice.
        b.advance(e, a, 40 * S);
        assert!((b.mean() - 0.5).abs() < 1e-9, "{}", b.mean());
        // Frozen: a storm of 100 is not learnt.
        b.freeze();
        b.add(e, a, 41 * S, 100);
        b.advance(e, a, 60 * S);
        assert!((b.mean() - 0.5).abs() < 1e-9, "{}", b.mean());
        b.thaw(60 * S);
        b.add(e, a, 61 * S, 3);
        b.advance(e, a, 70 * S);
        assert!((b.mean() - 1.75).abs() < 1e-9, "{}", b.mean());
        assert!(!b.negligible());
        b.advance(e, a, 200 * S);
        assert!(b.negligible(), "{}", b.mean());
    }
}
