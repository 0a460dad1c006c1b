//! Sockets stuck on a close, per process: `close_wait_stuck` and `fin_wait_2_stuck`. Fed by
//! every kernel table read; a socket counts once it has been in the state longer than a
//! threshold; the process fires at a minimum count and resolves when none is left (they
//! closed, or the process exited).

use std::collections::{BTreeMap, HashMap};

use observer_common::tcp_state;
use serde_json::json;

use super::{Alert, NS, SAMPLES, Status, Subject, endpoint};
use crate::track::stuck::Waiting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A socket is stuck once it has been in the state this long.
    pub after_s: u64,
    /// Fires when a process holds at least this many stuck sockets.
    pub min: u64,
}

/// Which state a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The peer closed and the process never called `close()`.
    CloseWait,
    /// The process shut down writing and the peer never closed.
    FinWait2,
}

impl Kind {
    fn state(self) -> u8 {
        match self {
            Kind::CloseWait => tcp_state::CLOSE_WAIT,
            Kind::FinWait2 => tcp_state::FIN_WAIT2,
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Kind::CloseWait => "close_wait_stuck",
            Kind::FinWait2 => "fin_wait_2_stuck",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::CloseWait => "CLOSE_WAIT",
            Kind::FinWait2 => "FIN_WAIT2",
        }
    }
}

/// A firing subject: what resolving it reports.
#[derive(Debug, Clone)]
struct Firing {
    subject: Subject,
    peak: u64,
}

/// (netns, pid); pid 0 when the owner is unknown.
type Key = (u32, u32);

#[derive(Debug)]
pub struct Rule {
    kind: Kind,
    config: Config,
    firing: HashMap<Key, Firing>,
}

impl Rule {
    #[must_use]
    pub fn new(kind: Kind, config: Config) -> Self {
        Self {
            kind,
            config,
            firing: HashMap::new(),
        }
    }

    /// Every socket in `CLOSE_WAIT` or `FIN_WAIT2` as of `now_ns` (sorted oldest first).
    pub fn table(&mut self, now_ns: u64, waiting: &[Waiting], alerts: &mut Vec<Alert>) {
        let after_ns = self.config.after_s.saturating_mul(NS);
        let mut stuck: BTreeMap<Key, Vec<&Waiting>> = BTreeMap::new();
        for w in waiting {
            if w.state == self.kind.state() && now_ns.saturating_sub(w.since_ns) >= after_ns {
                let pid = w.process.map_or(0, |p| p.pid);
                stuck.entry((w.netns, pid)).or_default().push(w);
            }
        }
        for (key, socks) in &stuck {
            let count = socks.len() as u64;
            if let Some(f) = self.firing.get_mut(key) {
                f.peak = f.peak.max(count);
                continue;
            }
            if count < self.config.min {
                continue;
            }
            let subject = Subject {
                netns: Some(key.0),
                process: socks[0].process,
                destination: None,
            };
            self.firing.insert(
                *key,
                Firing {
                    subject,
                    peak: count,
                },
            );
            alerts.push(self.alert(Status::Firing, now_ns, subject, socks));
        }
        let cleared: Vec<Key> = self
            .firing
            .keys()
            .filter(|k| !stuck.contains_key(k))
            .copied()
            .collect();
        for key in cleared {
            if let Some(f) = self.firing.remove(&key) {
                let mut alert = self.alert(Status::Resolved, now_ns, f.subject, &[]);
                alert.evidence.insert("peak", json!(f.peak));
                alerts.push(alert);
            }
        }
    }

    fn alert(&self, status: Status, now_ns: u64, subject: Subject, socks: &[&Waiting]) -> Alert {
        let who = subject.process.map_or_else(
            || "a process the observer could not name".to_owned(),
            |p| format!("{} (pid {})", p.name(), p.pid),
        );
        let oldest_s = socks
            .first()
            .map_or(0, |w| now_ns.saturating_sub(w.since_ns) / NS);
        let state = self.kind.name();
        let why = match self.kind {
            Kind::CloseWait => {
                "the peer closed and the process never called close(); find the code path \
                 that leaks these sockets"
            }
            Kind::FinWait2 => {
                "the process shut down writing and the peer never closed its end; check why \
                 the peer does not finish, and give up on it with a timeout and close()"
            }
        };
        let reason = match status {
            Status::Firing => format!(
                "{who} holds {} connection(s) in {state} for over {} s (oldest {oldest_s} s): \
                 {why}",
                socks.len(),
                self.config.after_s,
            ),
            Status::Resolved => format!("{who} no longer holds stuck {state} connections"),
        };
        let mut peers: Vec<String> = socks.iter().map(|w| endpoint(w.remote)).collect();
        peers.dedup();
        peers.truncate(SAMPLES);
        let mut ports: Vec<u16> = socks
            .iter()
            .filter(|w| w.server)
            .map(|w| w.local.1)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let mut evidence = BTreeMap::new();
        evidence.insert("oldest_age_s", json!(oldest_s));
        evidence.insert("peers", json!(peers));
        evidence.insert("listen_ports", json!(ports));
        Alert {
            rule: self.kind.rule(),
            status,
            ts_ns: now_ns,
            severity: 3,
            reason,
            subject,
            observed: socks.len() as u64,
            threshold: self.config.min,
            window_s: self.config.after_s,
            evidence,
            samples: socks.iter().take(SAMPLES).map(|w| w.uid).collect(),
        }
    }
}
