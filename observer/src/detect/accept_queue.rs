//! `accept_queue_overflow`, per listening socket: its accept queue is full and the kernel is
//! dropping connections for it (`ListenOverflows` of its namespace rising). The process holding
//! it does not call `accept()` fast enough, or at all. From listener samples (`sock_diag`
//! queue length and backlog, `TcpExt` counters), about one a second. Resolved once the queue is
//! below its backlog and a whole window passed without an overflow, or the listener closed.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
};

use serde_json::json;

use super::{Alert, NS, Status, Subject, endpoint};
use crate::{
    facts::listeners::{ListenSock, ListenerSample, NetnsStats},
    track::{record::Process, uid_of},
};

pub const DEFAULT_WINDOW_S: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Overflows are looked for over this window; resolved after a whole window without one.
    pub window_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_s: DEFAULT_WINDOW_S,
        }
    }
}

/// (netns, listening address).
type Key = (u32, SocketAddr);

#[derive(Debug, Clone)]
struct Firing {
    subject: Subject,
    backlog: u32,
    peak: u32,
    since_ns: u64,
}

#[derive(Debug)]
pub struct Rule {
    config: Config,
    /// Per namespace: (sample time, its counters), over the window.
    history: HashMap<u32, VecDeque<(u64, NetnsStats)>>,
    /// When each listener last saw its queue full or an overflow.
    firing: HashMap<Key, Firing>,
}

/// Drops of one window: (overflows, drops).
fn dropped(history: Option<&VecDeque<(u64, NetnsStats)>>) -> (u64, u64) {
    let Some(h) = history else { return (0, 0) };
    match (h.front(), h.back()) {
        (Some((_, first)), Some((_, last))) => (
            last.listen_overflows.saturating_sub(first.listen_overflows),
            last.listen_drops.saturating_sub(first.listen_drops),
        ),
        _ => (0, 0),
    }
}

/// The process that should call `accept()`: the lowest pid holding the socket.
fn owner(sock: &ListenSock) -> Option<Process> {
    let h = sock.holders.first()?;
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
            history: HashMap::new(),
            firing: HashMap::new(),
        }
    }

    fn window_ns(&self) -> u64 {
        self.config.window_s.saturating_mul(NS)
    }

    /// One listener sample.
    pub fn sample(&mut self, s: &ListenerSample, boot_id: &[u8; 16], alerts: &mut Vec<Alert>) {
        let window_ns = self.window_ns();
        for n in &s.namespaces {
            let h = self.history.entry(n.netns).or_default();
            h.push_back((s.ts_ns, *n));
            // Keep one sample at or before the window's start: the baseline of its deltas.
            while h.len() > 1 && h[1].0.saturating_add(window_ns) <= s.ts_ns {
                h.pop_front();
            }
        }
        self.history
            .retain(|netns, _| s.namespaces.iter().any(|n| n.netns == *netns));
        let mut present: Vec<Key> = Vec::new();
        for port in &s.ports {
            for sock in &port.sockets {
                let key = (port.netns, sock.local);
                present.push(key);
                let full = sock.full();
                let history = self.history.get(&port.netns);
                let (overflows, _) = dropped(history);
                if let Some(f) = self.firing.get_mut(&key) {
                    f.peak = f.peak.max(sock.queue);
                    if full || overflows > 0 {
                        continue;
                    }
                    let f = self.firing.remove(&key);
                    if let Some(f) = f {
                        alerts.push(self.resolved(s.ts_ns, key, &f, sock.queue));
                    }
                } else if full && overflows > 0 {
                    let subject = Subject {
                        netns: Some(port.netns),
                        process: owner(sock),
                        destination: Some((sock.local.ip(), sock.local.port())),
                    };
                    let mut alert = self.fired(s.ts_ns, subject, sock, history);
                    alert.samples = sock.queued.iter().map(|&c| uid_of(boot_id, c)).collect();
                    self.firing.insert(
                        key,
                        Firing {
                            subject,
                            backlog: sock.backlog,
                            peak: sock.queue,
                            since_ns: s.ts_ns,
                        },
                    );
                    alerts.push(alert);
                }
            }
        }
        let mut gone: Vec<Key> = self
            .firing
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        gone.sort_unstable();
        for key in gone {
            if let Some(f) = self.firing.remove(&key) {
                let mut alert = self.resolved(s.ts_ns, key, &f, 0);
                alert.reason = format!(
                    "the listener {} closed (its process exited or closed it); its accept \
                     queue is gone",
                    endpoint((key.1.ip(), key.1.port()))
                );
                alerts.push(alert);
            }
        }
    }

    fn fired(
        &self,
        ts_ns: u64,
        subject: Subject,
        sock: &ListenSock,
        history: Option<&VecDeque<(u64, NetnsStats)>>,
    ) -> Alert {
        let (overflows, drops) = dropped(history);
        let who = subject.process.map_or_else(
            || "the process listening there (not found in /proc)".to_owned(),
            |p| format!("{} (pid {})", p.name(), p.pid),
        );
        let reason = format!(
            "the accept queue of {} is full ({} of backlog {}) and the kernel dropped {overflows} \
             connection attempt(s) in {} s: {who} does not call accept() fast enough; check \
             whether it is stuck, or raise its listen() backlog",
            endpoint((sock.local.ip(), sock.local.port())),
            sock.queue,
            sock.backlog,
            self.config.window_s,
        );
        let mut evidence = BTreeMap::new();
        evidence.insert("queue", json!(sock.queue));
        evidence.insert("backlog", json!(sock.backlog));
        evidence.insert("listen_overflows", json!(overflows));
        evidence.insert("listen_drops", json!(drops));
        Alert {
            rule: "accept_queue_overflow",
            status: Status::Firing,
            ts_ns,
            severity: 4,
            reason,
            subject,
            observed: u64::from(sock.queue),
            threshold: u64::from(sock.backlog.max(1)),
            window_s: self.config.window_s,
            evidence,
            samples: Vec::new(),
        }
    }

    fn resolved(&self, ts_ns: u64, key: Key, f: &Firing, queue: u32) -> Alert {
        let mut evidence = BTreeMap::new();
        evidence.insert("queue", json!(queue));
        evidence.insert("backlog", json!(f.backlog));
        evidence.insert("peak", json!(f.peak));
        evidence.insert("firing_s", json!(ts_ns.saturating_sub(f.since_ns) / NS));
        Alert {
            rule: "accept_queue_overflow",
            status: Status::Resolved,
            ts_ns,
            severity: 4,
            reason: format!(
                "the accept queue of {} is below its backlog ({queue} of {}) and nothing \
                 overflowed for {} s",
                endpoint((key.1.ip(), key.1.port())),
                f.backlog,
                self.config.window_s
            ),
            subject: f.subject,
            observed: u64::from(queue),
            threshold: u64::from(f.backlog.max(1)),
            window_s: self.config.window_s,
            evidence,
            samples: Vec::new(),
        }
    }
}
