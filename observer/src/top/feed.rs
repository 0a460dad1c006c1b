//! Fills the read model at each refresh from what the pipeline holds: the tracker, a fresh
//! socket listing, the records' totals and the detectors' alerts. The same code serves the live
//! screen (`app::top`) and a replayed recording; it is pure: `now` is the listing's time.

use std::collections::HashSet;

use super::{
    alerts::AlertLog,
    model::{Conn, Model, Rates},
};
use crate::{
    detect::Alert,
    facts::{SocketScan, listeners::ListenerSample},
    track::Tracker,
};

/// What the records written since start add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub closed: u64,
    pub resets: u64,
    pub retransmits: u64,
}

/// What one refresh brings besides the tracker and the listing.
#[derive(Debug, Default)]
pub struct News {
    pub totals: Totals,
    /// Cookies of the sockets whose closed record was written since the last refresh.
    pub closed_cookies: Vec<u64>,
    /// Alerts raised since the last refresh, in order.
    pub alerts: Vec<Alert>,
    /// Events the kernel could not deliver since start.
    pub lost: u64,
}

/// The counters a refresh compares with the previous one.
struct Last {
    ts_ns: u64,
    totals: Totals,
    cookies: HashSet<u64>,
}

/// The state kept between refreshes.
pub struct Feed {
    started_ns: u64,
    last: Option<Last>,
    alerts: AlertLog,
    listeners: Option<ListenerSample>,
}

impl Feed {
    /// `started_ns`: when capture started, for the uptime.
    #[must_use]
    pub fn new(started_ns: u64) -> Self {
        Self {
            started_ns,
            last: None,
            alerts: AlertLog::default(),
            listeners: None,
        }
    }

    /// A listener sample: the Listeners view's rows, with rates since the previous sample.
    pub fn listeners(&mut self, model: &mut Model, sample: ListenerSample) {
        model.listeners = super::listeners::rows(self.listeners.as_ref(), &sample);
        self.listeners = Some(sample);
    }

    /// Rebuilds `model` from `scan`; rates are over the time since the previous refresh.
    pub fn refresh(&mut self, model: &mut Model, tracker: &Tracker, scan: &SocketScan, news: News) {
        let now = scan.ts_ns;
        model.now_ns = now;
        model.conns = tracker
            .snapshot(scan, now)
            .iter()
            .map(|row| {
                let mut conn = Conn::from_row(row);
                conn.tls = tracker.tls.open(row.cookie);
                conn
            })
            .collect();
        model.uptime_ns = now.saturating_sub(self.started_ns);
        model.lost = news.lost;
        for alert in news.alerts {
            self.alerts.push(alert);
        }
        self.alerts.expire(now);
        model.anomalies = self.alerts.rows().to_vec();
        let cookies: HashSet<u64> = model.conns.iter().map(|c| c.cookie).collect();
        let totals = news.totals;
        if let Some(prev) = &self.last {
            #[expect(clippy::cast_precision_loss, reason = "rates for display")]
            let per_s = |n: u64| n as f64 * 1e9 / now.saturating_sub(prev.ts_ns).max(1) as f64;
            // New: open now and not before, or closed before anyone saw them open.
            let born = cookies.difference(&prev.cookies).count()
                + news
                    .closed_cookies
                    .iter()
                    .filter(|c| !prev.cookies.contains(c))
                    .count();
            model.rates = Rates {
                new: per_s(born as u64),
                closed: per_s(totals.closed - prev.totals.closed),
                retransmits: per_s(totals.retransmits - prev.totals.retransmits),
                resets: per_s(totals.resets - prev.totals.resets),
            };
        }
        self.last = Some(Last {
            ts_ns: now,
            totals,
            cookies,
        });
    }
}
