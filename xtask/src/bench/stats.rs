//! The statistics of the paired measurement (`--paired`): the ABBA window schedule, pairing
//! windows, the median with its order-statistic confidence interval, and how many connections
//! the observer was attached for.

use std::time::Duration;

/// Whether window `i` (0-based) runs with observer attached. The schedule is ABBA: A P, P A,
/// A P, P A, … Windows `2k` and `2k + 1` form pair `k`, and the order within a pair alternates,
/// so a linear drift of the machine's speed biases odd and even pairs by the same amount in
/// opposite directions. Only the middle of each pair needs a toggle.
pub fn active(window: usize) -> bool {
    matches!(window % 4, 0 | 3)
}

/// One measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub active: bool,
    pub conns: u64,
    pub secs: f64,
}

impl Window {
    #[expect(
        clippy::cast_precision_loss,
        reason = "connection counts stay far below 2^52"
    )]
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.conns as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// An active window and the paused window next to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Connections per second with observer attached.
    pub active: f64,
    /// Connections per second with observer paused.
    pub paused: f64,
    /// Whether the active window came first.
    pub active_first: bool,
}

impl Pair {
    pub fn ratio(&self) -> f64 {
        self.active / self.paused
    }
}

/// Pairs windows `2k` and `2k + 1`, dropping the first `skip` pairs (warm-up), a trailing
/// unpaired window, and any pair that is not one active and one paused window or has a paused
/// rate of 0.
pub fn pairs(windows: &[Window], skip: usize) -> Vec<Pair> {
    windows
        .chunks_exact(2)
        .skip(skip)
        .filter_map(|w| {
            let (a, p) = match (w[0].active, w[1].active) {
                (true, false) => (w[0], w[1]),
                (false, true) => (w[1], w[0]),
                _ => return None,
            };
            (p.rate() > 0.0).then_some(Pair {
                active: a.rate(),
                paused: p.rate(),
                active_first: w[0].active,
            })
        })
        .collect()
}

pub fn median(values: &[f64]) -> Option<f64> {
    let sorted = sorted(values);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some(f64::midpoint(sorted[mid - 1], sorted[mid])),
    }
}

#[expect(clippy::cast_precision_loss, reason = "a few hundred values")]
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The distribution-free 95% confidence interval of the median: the order statistics
/// `x(k)` and `x(n + 1 - k)` (1-based) for the largest `k` with `P(B < k) ≤ 2.5%`, where `B` is
/// Binomial(n, ½), the number of values below the true median. Its coverage is at least 95%.
/// `None` below 6 values, where even the full range covers less than 95%.
pub fn median_ci(values: &[f64]) -> Option<(f64, f64)> {
    let sorted = sorted(values);
    let n = sorted.len();
    // The largest k with P(B <= k - 1) <= 0.025; k = 0 means no interval reaches 95%.
    let k = (0..=n / 2)
        .take_while(|&k| k == 0 || binomial_half_cdf(n, k - 1) <= 0.025)
        .last()?;
    (k > 0).then(|| (sorted[k - 1], sorted[n - k]))
}

/// `P(B <= k)` for `B` ~ Binomial(n, ½), summed in log space so that large `n` cannot underflow.
#[expect(clippy::cast_precision_loss, reason = "small integers")]
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..=k.min(n) {
        if i > 0 {
            ln_choose += ((n + 1 - i) as f64).ln() - (i as f64).ln();
        }
        total += (ln_choose + ln_half_n).exp();
    }
    total.min(1.0)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// One pause or resume: the generator's connection count when the signal was sent and when
/// observer's confirmation appeared in its output, and the time between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Toggle {
    pub to_active: bool,
    pub sent: u64,
    pub confirmed: u64,
    pub latency: Duration,
}

/// How many of the generator's connections ran while observer was attached: at least those
/// between a confirmed resume and the next pause signal, at most those between a resume signal
/// and the next confirmed pause. observer is attached when the count starts at 0 and, when the
/// last toggle was a resume, until the count reaches `end`.
pub fn active_conns(toggles: &[Toggle], end: u64) -> (u64, u64) {
    let (mut low, mut high) = (0, 0);
    let mut since: Option<(u64, u64)> = Some((0, 0));
    for t in toggles {
        match (t.to_active, since) {
            (false, Some((confirmed, sent))) => {
                low += t.sent.saturating_sub(confirmed);
                high += t.confirmed.saturating_sub(sent);
                since = None;
            }
            (true, None) => since = Some((t.confirmed, t.sent)),
            // A toggle to the state observer is already in changes nothing.
            _ => {}
        }
    }
    if let Some((confirmed, sent)) = since {
        low += end.saturating_sub(confirmed);
        high += end.saturating_sub(sent);
    }
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(active: bool, conns: u64) -> Window {
        Window {
            active,
            conns,
            secs: 0.5,
        }
    }

    #[test]
    fn the_schedule_is_abba() {
        let states: Vec<bool> = (0..8).map(active).collect();
        assert_eq!(states, [true, false, false, true, true, false, false, true]);
        // Every pair is one active and one paused window; the order alternates.
        for k in 0..50 {
            assert_ne!(active(2 * k), active(2 * k + 1));
            assert_ne!(active(2 * k), active(2 * k + 2));
        }
    }

    #[test]
    fn pairs_skip_the_warm_up_and_the_odd_window() {
        let windows: Vec<Window> = (0..7).map(|i| window(active(i), 100 + i as u64)).collect();
        let pairs = pairs(&windows, 1);
        assert_eq!(pairs.len(), 2);
        // Pair 1 is windows 2 (paused, 102) and 3 (active, 103).
        assert_eq!(
            pairs[0],
            Pair {
                active: 206.0,
                paused: 204.0,
                active_first: false
            }
        );
        // Pair 2 is windows 4 (active, 104) and 5 (paused, 105); window 6 has no partner.
        assert!(pairs[1].active_first);
        assert!((pairs[1].ratio() - 104.0 / 105.0).abs() < 1e-12);
    }

    #[test]
    fn pairs_drop_malformed_pairs() {
        let windows = [
            window(true, 1),
            window(true, 1),
            window(true, 1),
            window(false, 0),
        ];
        assert!(pairs(&windows, 0).is_empty());
    }

    #[test]
    fn median_and_mean() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }

    #[test]
    fn binomial_cdf() {
        assert!((binomial_half_cdf(10, 1) - 11.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_half_cdf(10, 10) - 1.0).abs() < 1e-12);
        assert!((binomial_half_cdf(4, 2) - 11.0 / 16.0).abs() < 1e-12);
        // Large n must neither underflow nor overflow.
        assert!((binomial_half_cdf(3000, 1500) - 0.507).abs() < 0.001);
    }

    #[test]
    fn median_ci_uses_the_right_order_statistics() {
        let values = |n: u32| -> Vec<f64> { (1..=n).rev().map(f64::from).collect() };
        // Too few values for 95%: even (x1, x5) covers only 1 - 2/32.
        assert_eq!(median_ci(&values(5)), None);
        assert_eq!(median_ci(&values(6)), Some((1.0, 6.0)));
        // n = 10: P(B <= 1) = 11/1024 <= 2.5% < P(B <= 2) = 56/1024, so (x2, x9).
        assert_eq!(median_ci(&values(10)), Some((2.0, 9.0)));
        // The textbook interval for n = 100 is (x40, x61).
        assert_eq!(median_ci(&values(100)), Some((40.0, 61.0)));
    }

    #[test]
    fn active_connections_are_bounded_by_signal_and_confirmation() {
        let toggle = |to_active, sent, confirmed| Toggle {
            to_active,
            sent,
            confirmed,
            latency: Duration::ZERO,
        };
        // Attached from 0; paused (signal at 100, confirmed at 101); resumed (200, 203);
        // paused (300, 302); resumed (400, 401); attached until 500.
        let toggles = [
            toggle(false, 100, 101),
            toggle(true, 200, 203),
            toggle(false, 300, 302),
            toggle(true, 400, 401),
        ];
        assert_eq!(
            active_conns(&toggles, 500),
            (100 + 97 + 99, 101 + 102 + 100)
        );
        assert_eq!(active_conns(&toggles[..3], 500), (100 + 97, 101 + 102));
        assert_eq!(active_conns(&[], 42), (42, 42));
    }
}
