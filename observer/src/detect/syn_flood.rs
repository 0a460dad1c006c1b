//! `syn_flood`, per listening port: SYNs arrive that never complete a handshake. From listener
//! samples (about one a second): the `listener_counts` program's SYN and handshake-ACK counts, the
//! half-open requests `sock_diag` lists, the namespace's SYN-cookie and SYN-queue counters, and
//! the SYN-ACK retransmits the tracepoint reports.
//!
//! What tells an attack from a burst of real clients: real clients complete their handshakes,
//! so SYNs minus handshakes stays near zero however high the rate. The rule fires when, over the
//! window, the unanswered SYNs per second reach `--syn-flood-rate` and are at least
//! `--syn-flood-ratio` percent of all SYNs, or when the half-open requests reach
//! `--syn-flood-half-open` (a slow flood filling the SYN queue, or no SYN counts). Not by rate
//! while every socket of the port has a full accept queue: the kernel then drops real clients'
//! SYNs too, and `accept_queue_overflow` names the cause. Resolved
//! once both fall below half their thresholds, or the listener closed.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use observer_common::SynackRetransmit;
use serde_json::json;

use super::{Alert, NS, Status, Subject, endpoint};
use crate::{
    facts::listeners::{ListenPort, ListenSock, ListenerSample, NetnsStats, SOURCES},
    track::record::{Process, ends_of},
};

pub const DEFAULT_RATE: u64 = 100;
pub const DEFAULT_RATIO_PCT: u64 = 50;
pub const DEFAULT_HALF_OPEN: u64 = 256;
pub const DEFAULT_WINDOW_S: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Unanswered SYNs per second over the window.
    pub rate: u64,
    /// Unanswered SYNs as a percentage of all SYNs.
    pub ratio_pct: u64,
    /// Half-open requests at once (0: this trigger off).
    pub half_open: u64,
    pub window_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            ratio_pct: DEFAULT_RATIO_PCT,
            half_open: DEFAULT_HALF_OPEN,
            window_s: DEFAULT_WINDOW_S,
        }
    }
}

/// One port in one sample.
#[derive(Debug, Clone)]
struct Point {
    ts_ns: u64,
    syns: u64,
    established: u64,
    half_open: u32,
    netns: NetnsStats,
    /// SYNs per source prefix since the previous sample, and half-open per prefix now.
    sources: Vec<(String, u64, u32)>,
}

/// (netns, port).
type Key = (u32, u16);

#[derive(Debug, Default)]
struct Port {
    points: VecDeque<Point>,
    firing: Option<Firing>,
}

#[derive(Debug, Clone, Copy)]
struct Firing {
    subject: Subject,
    since_ns: u64,
    peak_rate: u64,
}

/// What a window shows.
#[derive(Debug, Default)]
struct Window {
    seconds: f64,
    syns: u64,
    established: u64,
    unanswered: u64,
    half_open: u32,
    synack_retransmits: u64,
    netns: NetnsStats,
    counted: bool,
    sources: Vec<(String, u64, u32)>,
}

impl Window {
    fn per_s(&self, n: u64) -> u64 {
        if self.seconds <= 0.0 {
            return 0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rate, rounded"
        )]
        let rate = (n as f64 / self.seconds).round() as u64;
        rate
    }
}

#[derive(Debug)]
pub struct Rule {
    config: Config,
    ports: HashMap<Key, Port>,
    /// SYN-ACK retransmits by (listening ip, port): time of each, over the window.
    synacks: HashMap<(IpAddr, u16), VecDeque<u64>>,
}

fn owner(port: &ListenPort) -> Option<Process> {
    let h = port.sockets.iter().find_map(|s| s.holders.first())?;
    let mut comm = [0u8; observer_common::COMM_LEN];
    let name = h.comm.as_bytes();
    let n = name.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&name[..n]);
    Some(Process {
        pid: h.pid,
        uid: 0,
        comm,
    })
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            ports: HashMap::new(),
            synacks: HashMap::new(),
        }
    }

    fn window_ns(&self) -> u64 {
        self.config.window_s.saturating_mul(NS)
    }

    /// A SYN-ACK retransmitted by a listener.
    pub fn synack(&mut self, s: &SynackRetransmit) {
        let (local, _) = ends_of(&s.tuple);
        self.synacks
            .entry(local)
            .or_default()
            .push_back(s.header.ts_ns);
    }

    fn synacks_in(&self, port: &ListenPort, from_ns: u64, to_ns: u64) -> u64 {
        self.synacks
            .iter()
            .filter(|((ip, p), _)| {
                *p == port.port
                    && port
                        .sockets
                        .iter()
                        .any(|s| s.local.ip().is_unspecified() || s.local.ip() == *ip)
            })
            .map(|(_, times)| times.iter().filter(|&&t| t > from_ns && t <= to_ns).count() as u64)
            .sum()
    }

    /// One listener sample.
    pub fn sample(&mut self, s: &ListenerSample, alerts: &mut Vec<Alert>) {
        let window_ns = self.window_ns();
        // A port number present in several namespaces cannot own a retransmit (the tracepoint
        // names no namespace): those are left out.
        let mut netns_per_port: HashMap<u16, usize> = HashMap::new();
        for p in &s.ports {
            *netns_per_port.entry(p.port).or_default() += 1;
        }
        let mut present = Vec::with_capacity(s.ports.len());
        for port in &s.ports {
            present.push((port.netns, port.port));
            let unique = netns_per_port.get(&port.port) == Some(&1);
            self.port(s, port, unique, alerts);
        }
        let mut gone: Vec<Key> = self
            .ports
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        gone.sort_unstable();
        for key in gone {
            if let Some(Port {
                firing: Some(f), ..
            }) = self.ports.remove(&key)
            {
                alerts.push(self.resolved(s.ts_ns, &f, &Window::default()));
            }
        }
        let oldest = s.ts_ns.saturating_sub(window_ns.saturating_add(NS));
        self.synacks.retain(|_, times| {
            while times.front().is_some_and(|&t| t < oldest) {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    /// One port of a sample: its window, and whether it fires or resolves.
    fn port(
        &mut self,
        s: &ListenerSample,
        port: &ListenPort,
        unique: bool,
        alerts: &mut Vec<Alert>,
    ) {
        let window_ns = self.window_ns();
        let key = (port.netns, port.port);
        let point = Point {
            ts_ns: s.ts_ns,
            syns: port.syns.unwrap_or(0),
            established: port.handshakes.unwrap_or(0),
            half_open: port.half_open,
            netns: s.netns(port.netns).copied().unwrap_or_default(),
            sources: port
                .sources
                .iter()
                .map(|x| (x.prefix.clone(), x.syns, x.half_open))
                .collect(),
        };
        let (mut w, span) = {
            let entry = self.ports.entry(key).or_default();
            entry.points.push_back(point);
            while entry.points.len() > 1
                && entry.points[1].ts_ns.saturating_add(window_ns) <= s.ts_ns
            {
                entry.points.pop_front();
            }
            let span = entry.points.front().map(|f| (f.ts_ns, s.ts_ns));
            (window(&entry.points, s.counted), span)
        };
        if unique && let Some((from, to)) = span {
            w.synack_retransmits = self.synacks_in(port, from, to);
        }
        let rate = w.per_s(w.unanswered);
        let ratio_ok = w.syns > 0
            && w.unanswered.saturating_mul(100) >= self.config.ratio_pct.saturating_mul(w.syns);
        // A full accept queue drops real clients' SYNs too (they retry, unanswered): that is
        // `accept_queue_overflow`'s finding, not a flood.
        let accept_full = !port.sockets.is_empty() && port.sockets.iter().all(ListenSock::full);
        let by_rate = w.counted && rate >= self.config.rate && ratio_ok && !accept_full;
        let by_half_open =
            self.config.half_open > 0 && u64::from(w.half_open) >= self.config.half_open;
        let firing = self.ports.get(&key).and_then(|p| p.firing);
        match firing {
            None if by_rate || by_half_open => {
                let subject = Subject {
                    netns: Some(port.netns),
                    process: owner(port),
                    destination: Some((
                        port.sockets
                            .first()
                            .map_or(IpAddr::from([0, 0, 0, 0]), |x| x.local.ip()),
                        port.port,
                    )),
                };
                alerts.push(self.alert(s.ts_ns, subject, &w, by_rate));
                if let Some(entry) = self.ports.get_mut(&key) {
                    entry.firing = Some(Firing {
                        subject,
                        since_ns: s.ts_ns,
                        peak_rate: rate,
                    });
                }
            }
            Some(mut f) => {
                f.peak_rate = f.peak_rate.max(rate);
                let calm = rate < self.config.rate.div_ceil(2)
                    && (self.config.half_open == 0
                        || u64::from(w.half_open) < self.config.half_open.div_ceil(2));
                if calm {
                    alerts.push(self.resolved(s.ts_ns, &f, &w));
                }
                if let Some(entry) = self.ports.get_mut(&key) {
                    entry.firing = (!calm).then_some(f);
                }
            }
            None => {}
        }
    }

    fn alert(&self, ts_ns: u64, subject: Subject, w: &Window, by_rate: bool) -> Alert {
        let listener = subject.destination.map_or_else(String::new, endpoint);
        let who = subject.process.map_or_else(
            || "a process observer could not name".to_owned(),
            |p| format!("{} (pid {})", p.name(), p.pid),
        );
        let top = w
            .sources
            .first()
            .map_or_else(String::new, |(p, _, _)| format!(", most from {p}"));
        let trigger = if by_rate {
            format!(
                "{} SYNs/s, of which {} never completed a handshake (only {} handshakes/s)",
                w.per_s(w.syns),
                w.per_s(w.unanswered),
                w.per_s(w.established)
            )
        } else {
            format!("{} half-open connections", w.half_open)
        };
        let reason = format!(
            "SYN flood on {listener} ({who}): {trigger} over {} s{top}; the SYN queue holds \
             half-open requests that real clients would have completed. Check the sources, \
             keep net.ipv4.tcp_syncookies on, and filter the senders upstream",
            self.config.window_s
        );
        Alert {
            rule: "syn_flood",
            status: Status::Firing,
            ts_ns,
            severity: 4,
            reason,
            subject,
            observed: w.per_s(w.unanswered),
            threshold: self.config.rate.max(1),
            window_s: self.config.window_s,
            evidence: evidence(w),
            samples: Vec::new(),
        }
    }

    fn resolved(&self, ts_ns: u64, f: &Firing, w: &Window) -> Alert {
        let listener = f.subject.destination.map_or_else(String::new, endpoint);
        let mut evidence = evidence(w);
        evidence.insert("peak_rate", json!(f.peak_rate));
        evidence.insert("firing_s", json!(ts_ns.saturating_sub(f.since_ns) / NS));
        Alert {
            rule: "syn_flood",
            status: Status::Resolved,
            ts_ns,
            severity: 4,
            reason: format!(
                "the SYN flood on {listener} is over: {} unanswered SYNs/s and {} half-open \
                 over the last {} s",
                w.per_s(w.unanswered),
                w.half_open,
                self.config.window_s
            ),
            subject: f.subject,
            observed: w.per_s(w.unanswered),
            threshold: self.config.rate.max(1),
            window_s: self.config.window_s,
            evidence,
            samples: Vec::new(),
        }
    }
}

/// The window's numbers, from its first point (the baseline) to its last.
fn window(points: &VecDeque<Point>, counted: bool) -> Window {
    let (Some(first), Some(last)) = (points.front(), points.back()) else {
        return Window::default();
    };
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds to seconds")]
    let seconds = last.ts_ns.saturating_sub(first.ts_ns) as f64 / 1e9;
    let syns = last.syns.saturating_sub(first.syns);
    let established = last.established.saturating_sub(first.established);
    let mut sources: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    for p in points.iter().skip(1) {
        for (prefix, n, _) in &p.sources {
            sources.entry(prefix.clone()).or_default().0 += n;
        }
    }
    for (prefix, _, h) in &last.sources {
        sources.entry(prefix.clone()).or_default().1 = *h;
    }
    let mut sources: Vec<(String, u64, u32)> = sources
        .into_iter()
        .filter(|(_, (n, h))| *n > 0 || *h > 0)
        .map(|(p, (n, h))| (p, n, h))
        .collect();
    sources.sort_by(|a, b| (b.1, b.2).cmp(&(a.1, a.2)).then_with(|| a.0.cmp(&b.0)));
    sources.truncate(SOURCES);
    let netns = NetnsStats {
        syncookies_sent: last
            .netns
            .syncookies_sent
            .saturating_sub(first.netns.syncookies_sent),
        syncookies_recv: last
            .netns
            .syncookies_recv
            .saturating_sub(first.netns.syncookies_recv),
        syncookies_failed: last
            .netns
            .syncookies_failed
            .saturating_sub(first.netns.syncookies_failed),
        reqq_full_drop: last
            .netns
            .reqq_full_drop
            .saturating_sub(first.netns.reqq_full_drop),
        reqq_full_do_cookies: last
            .netns
            .reqq_full_do_cookies
            .saturating_sub(first.netns.reqq_full_do_cookies),
        ..last.netns
    };
    Window {
        seconds: if points.len() >= 2 { seconds } else { 0.0 },
        syns,
        established,
        unanswered: syns.saturating_sub(established),
        half_open: last.half_open,
        synack_retransmits: 0,
        netns,
        counted,
        sources,
    }
}

fn evidence(w: &Window) -> BTreeMap<&'static str, serde_json::Value> {
    let mut e = BTreeMap::new();
    if w.counted {
        e.insert("syn_rate", json!(w.per_s(w.syns)));
        e.insert("handshake_rate", json!(w.per_s(w.established)));
        e.insert("syns", json!(w.syns));
        e.insert("handshakes", json!(w.established));
    }
    e.insert("half_open", json!(w.half_open));
    e.insert("synack_retransmits", json!(w.synack_retransmits));
    e.insert("syncookies_sent", json!(w.netns.syncookies_sent));
    e.insert("syncookies_failed", json!(w.netns.syncookies_failed));
    e.insert("syn_queue_drops", json!(w.netns.reqq_full_drop));
    if let Some(mode) = w.netns.syncookies {
        e.insert("syncookies", json!(mode));
    }
    e.insert(
        "sources",
        json!(
            w.sources
                .iter()
                .map(|(p, n, h)| json!({"prefix": p, "syns": n, "half_open": h}))
                .collect::<Vec<_>>()
        ),
    );
    e
}
