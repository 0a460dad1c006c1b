//! Fills the read model at each refresh from what the pipeline holds: the tracker, a fresh
//! socket listing, the records' totals and the detectors' alerts. The same code serves the live
//! screen (`app::top`) and a replayed recording; it is pure: `now` is the listing's time.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{
    alerts::AlertLog,
    model::{Conn, Model, OwnerRate, Rates},
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

/// A socket whose closed record was written: its owner, and the payload bytes it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub cookie: u64,
    pub pid: Option<u32>,
    pub comm: String,
    /// Payload bytes received and sent, over its whole life.
    pub bytes: u64,
}

/// What one refresh brings besides the tracker and the listing.
#[derive(Debug, Default)]
pub struct News {
    pub totals: Totals,
    /// The sockets whose closed record was written since the last refresh.
    pub closed: Vec<Closed>,
    /// Alerts raised since the last refresh, in order.
    pub alerts: Vec<Alert>,
    /// Events the kernel could not deliver since start.
    pub lost: u64,
}

/// The counters a refresh compares with the previous one.
struct Last {
    ts_ns: u64,
    totals: Totals,
    /// Every socket listed, with the payload bytes it had carried.
    bytes: HashMap<u64, u64>,
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
        let bytes: HashMap<u64, u64> = model.conns.iter().map(|c| (c.cookie, c.bytes())).collect();
        let totals = news.totals;
        if let Some(prev) = &self.last {
            #[expect(clippy::cast_precision_loss, reason = "rates for display")]
            let per_s = |n: u64| n as f64 * 1e9 / now.saturating_sub(prev.ts_ns).max(1) as f64;
            let owners = owners(&prev.bytes, &model.conns, &news.closed);
            model.rates = Rates {
                new: per_s(owners.values().map(|o| o.0).sum()),
                closed: per_s(totals.closed - prev.totals.closed),
                retransmits: per_s(totals.retransmits - prev.totals.retransmits),
                resets: per_s(totals.resets - prev.totals.resets),
            };
            model.owner_rates = owners
                .into_iter()
                .filter(|(_, (new, bytes))| *new > 0 || *bytes > 0)
                .map(|((pid, comm), (new, bytes))| OwnerRate {
                    pid,
                    comm,
                    new_per_s: per_s(new),
                    bytes_per_s: per_s(bytes),
                })
                .collect();
        }
        self.last = Some(Last {
            ts_ns: now,
            totals,
            bytes,
        });
    }
}

/// Per owner (pid and name): connections new since the previous listing (`before`), and the
/// payload bytes carried since. A socket is new when it was not listed before and is not a
/// listener; one that closed in between counts once, from its record (a client's `TIME_WAIT`
/// row keeps its cookie).
fn owners(
    before: &HashMap<u64, u64>,
    conns: &[Conn],
    closed: &[Closed],
) -> BTreeMap<(Option<u32>, String), (u64, u64)> {
    let mut by: BTreeMap<(Option<u32>, String), (u64, u64)> = BTreeMap::new();
    let mut add = |pid: Option<u32>, comm: &str, cookie: u64, bytes: u64, new: bool| {
        let seen = before.get(&cookie).copied();
        let o = by.entry((pid, comm.to_owned())).or_default();
        o.0 += u64::from(new && seen.is_none());
        o.1 += bytes.saturating_sub(seen.unwrap_or(0));
    };
    let gone: HashSet<u64> = closed.iter().map(|c| c.cookie).collect();
    for c in closed {
        add(c.pid, &c.comm, c.cookie, c.bytes, true);
    }
    for c in conns.iter().filter(|c| !gone.contains(&c.cookie)) {
        let listener = c.state == observer_common::tcp_state::LISTEN;
        add(c.pid, &c.comm, c.cookie, c.bytes(), !listener);
    }
    by
}

#[cfg(test)]
mod tests {
    use observer_common::tcp_state::{ESTABLISHED, LISTEN, TIME_WAIT};

    use super::*;

    /// A socket of `pid` with `bytes` payload bytes so far (in and out).
    fn open(cookie: u64, pid: u32, state: u8, bytes: u64) -> Conn {
        let mut c = crate::top::tests::conn(cookie, pid, "app", "10.0.0.1:1", "10.0.0.2:2", state);
        (c.bytes_in, c.bytes_out) = (Some(bytes), Some(0));
        c
    }

    fn closed(cookie: u64, pid: u32, bytes: u64) -> Closed {
        Closed {
            cookie,
            pid: Some(pid),
            comm: "app".into(),
            bytes,
        }
    }

    #[test]
    fn new_connections_and_bytes_per_owner_since_the_last_listing() {
        // (case, listed before: cookie → bytes, listed now, closed since, (new, bytes) of pid 1)
        type Case = (
            &'static str,
            Vec<(u64, u64)>,
            Vec<Conn>,
            Vec<Closed>,
            (u64, u64),
        );
        let cases: Vec<Case> = vec![
            (
                "open all along: its growth",
                vec![(7, 100)],
                vec![open(7, 1, ESTABLISHED, 300)],
                vec![],
                (0, 200),
            ),
            (
                "new and open: all of it",
                vec![],
                vec![open(7, 1, ESTABLISHED, 50)],
                vec![],
                (1, 50),
            ),
            (
                "a new listener is no connection",
                vec![],
                vec![open(7, 1, LISTEN, 0)],
                vec![],
                (0, 0),
            ),
            (
                "born and closed in between, its TIME_WAIT row listed: once, from its record",
                vec![],
                vec![open(7, 1, TIME_WAIT, 0)],
                vec![closed(7, 1, 500)],
                (1, 500),
            ),
            (
                "listed before, closed since: the rest",
                vec![(7, 100)],
                vec![],
                vec![closed(7, 1, 160)],
                (0, 60),
            ),
            (
                "two of its own and one of another owner",
                vec![(8, 10)],
                vec![
                    open(7, 1, ESTABLISHED, 5),
                    open(8, 1, ESTABLISHED, 30),
                    open(9, 2, ESTABLISHED, 99),
                ],
                vec![],
                (1, 25),
            ),
        ];
        for (case, before, now, gone, want) in cases {
            let before: HashMap<u64, u64> = before.into_iter().collect();
            let by = owners(&before, &now, &gone);
            let got = by
                .get(&(Some(1), "app".to_owned()))
                .copied()
                .unwrap_or_default();
            assert_eq!(got, want, "{case}");
        }
        let by = owners(&HashMap::new(), &[open(9, 2, ESTABLISHED, 99)], &[]);
        assert_eq!(
            by.get(&(Some(2), "app".to_owned())),
            Some(&(1, 99)),
            "owners apart"
        );
    }
}
