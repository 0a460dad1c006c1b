//! Anomaly detection: the tracker's outputs and tables in, alerts out (docs/anomalies.md).
//!
//! Pure, like the tracker: every decision uses event timestamps or the `now_ns` passed in
//! (`CLOCK_BOOTTIME`), never the wall clock, so a recording replays to the same alerts. Each
//! rule keeps per-subject state with hysteresis: it fires once when its threshold is crossed,
//! stays firing while the condition holds, and resolves once the condition has fully cleared.

pub mod accept_queue;
pub mod close_wait;
pub mod connect_failures;
pub mod event_loss;
pub mod fin_wait_2;
pub mod rate;
pub mod retransmit_storm;
pub mod rst_storm;
pub mod stuck;
pub mod syn_flood;
pub mod time_wait;
pub mod tls_failures;
pub mod window;

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::Value;

use crate::{
    facts::{TimeWaitCensus, listeners::ListenerSample},
    track::{
        record::{Output, Process, Uid},
        stuck::Waiting,
    },
};

/// At most this many sample connection uids (and peers) are named in an alert.
pub const SAMPLES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// What an alert is about: a process, a destination (port 0: a remote host), or the observer
/// itself (all `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subject {
    pub netns: Option<u32>,
    pub process: Option<Process>,
    pub destination: Option<(IpAddr, u16)>,
}

impl Subject {
    /// A destination (port 0: a remote host) in one netns, named by a process.
    fn at(netns: u32, process: Option<Process>, destination: (IpAddr, u16)) -> Self {
        Self {
            netns: Some(netns),
            process,
            destination: Some(destination),
        }
    }
}

/// One alert: a rule started or stopped firing for a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: &'static str,
    pub status: Status,
    pub ts_ns: u64,
    /// `event.severity`: 2 low, 3 medium, 4 high.
    pub severity: u8,
    /// A sentence a person can act on.
    pub reason: String,
    pub subject: Subject,
    pub observed: u64,
    pub threshold: u64,
    pub window_s: u64,
    /// Rule-specific numbers and lists (`anomaly.<name>`).
    pub evidence: BTreeMap<&'static str, Value>,
    /// Connections that show it.
    pub samples: Vec<Uid>,
}

/// Thresholds; `None` turns a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub close_wait: Option<close_wait::Config>,
    pub fin_wait_2: Option<fin_wait_2::Config>,
    pub connect_failures: Option<connect_failures::Config>,
    pub event_loss: Option<event_loss::Config>,
    pub rst_storm: Option<rst_storm::Config>,
    pub retransmit_storm: Option<retransmit_storm::Config>,
    pub time_wait: Option<time_wait::Config>,
    pub tls_failures: Option<tls_failures::Config>,
    pub syn_flood: Option<syn_flood::Config>,
    pub accept_queue: Option<accept_queue::Config>,
}

/// Every enabled rule, fed by the pipeline.
#[derive(Debug)]
pub struct Detector {
    close_wait: Option<stuck::Rule>,
    fin_wait_2: Option<stuck::Rule>,
    connect_failures: Option<connect_failures::Rule>,
    event_loss: Option<event_loss::Rule>,
    rst_storm: Option<rst_storm::Rule>,
    retransmit_storm: Option<retransmit_storm::Rule>,
    time_wait: Option<time_wait::Rule>,
    tls_failures: Option<tls_failures::Rule>,
    syn_flood: Option<syn_flood::Rule>,
    accept_queue: Option<accept_queue::Rule>,
    /// The boot the sockets' cookies belong to: alerts name connections by `conn.uid`.
    boot_id: [u8; 16],
}

impl Detector {
    /// Names the connections of alerts as the records of boot `boot_id` do.
    #[must_use]
    pub fn on_boot(mut self, boot_id: [u8; 16]) -> Self {
        self.boot_id = boot_id;
        self
    }

    #[must_use]
    pub fn new(config: &Config) -> Self {
        Self {
            close_wait: config.close_wait.map(close_wait::rule),
            fin_wait_2: config.fin_wait_2.map(fin_wait_2::rule),
            connect_failures: config.connect_failures.map(connect_failures::Rule::new),
            event_loss: config.event_loss.map(event_loss::Rule::new),
            rst_storm: config.rst_storm.map(rst_storm::Rule::new),
            retransmit_storm: config.retransmit_storm.map(retransmit_storm::Rule::new),
            time_wait: config.time_wait.map(time_wait::Rule::new),
            tls_failures: config.tls_failures.map(tls_failures::Rule::new),
            syn_flood: config.syn_flood.map(syn_flood::Rule::new),
            accept_queue: config.accept_queue.map(accept_queue::Rule::new),
            boot_id: [0; 16],
        }
    }

    /// Whether a rule needs listener samples (about every second).
    #[must_use]
    pub fn wants_listeners(&self) -> bool {
        self.syn_flood.is_some() || self.accept_queue.is_some()
    }

    /// Whether a rule needs SYN counts per listener (the `listener_counts` program).
    #[must_use]
    pub fn wants_syn_counts(&self) -> bool {
        self.syn_flood.is_some()
    }

    /// A listener sample (`facts::listeners`).
    pub fn listeners(&mut self, sample: &ListenerSample, alerts: &mut Vec<Alert>) {
        if let Some(rule) = &mut self.accept_queue {
            rule.sample(sample, &self.boot_id, alerts);
        }
        if let Some(rule) = &mut self.syn_flood {
            rule.sample(sample, alerts);
        }
    }

    /// A SYN-ACK retransmit (`tcp:tcp_retransmit_synack`).
    pub fn synack(&mut self, s: &observer_common::SynackRetransmit) {
        if let Some(rule) = &mut self.syn_flood {
            rule.synack(s);
        }
    }

    /// Whether a rule needs the kernel's socket table read regularly (about every second).
    #[must_use]
    pub fn wants_table(&self) -> bool {
        self.close_wait.is_some() || self.fin_wait_2.is_some()
    }

    /// Whether a rule needs the time-wait sockets counted regularly (every few seconds).
    #[must_use]
    pub fn wants_time_wait(&self) -> bool {
        self.time_wait.is_some()
    }

    /// A census of time-wait sockets; every record that ended by `settled_ns` was handed in.
    pub fn time_wait(&mut self, census: &TimeWaitCensus, settled_ns: u64, alerts: &mut Vec<Alert>) {
        if let Some(rule) = &mut self.time_wait {
            rule.census(census, alerts);
        }
        self.tick(census.ts_ns, settled_ns, alerts);
    }

    /// One tracker output (a connection or loss record).
    pub fn output(&mut self, output: &Output, alerts: &mut Vec<Alert>) {
        match output {
            Output::Connection(c) => {
                if let Some(rule) = &mut self.connect_failures {
                    rule.record(c, alerts);
                }
                if let Some(rule) = &mut self.rst_storm {
                    rule.record(c, alerts);
                }
                if let Some(rule) = &mut self.retransmit_storm {
                    rule.record(c, alerts);
                }
                if let Some(rule) = &mut self.time_wait {
                    rule.record(c);
                }
            }
            Output::Loss(l) => {
                if let Some(rule) = &mut self.event_loss {
                    rule.loss(l, alerts);
                }
            }
            Output::Tls(t) => {
                if let Some(rule) = &mut self.tls_failures {
                    rule.record(t, alerts);
                }
            }
            Output::State(_) => {}
        }
    }

    /// The sockets in `CLOSE_WAIT` or `FIN_WAIT2` of a kernel table read at `now_ns`; every
    /// record that ended by `settled_ns` was handed in (`tick`).
    pub fn table(
        &mut self,
        now_ns: u64,
        settled_ns: u64,
        waiting: &[Waiting],
        alerts: &mut Vec<Alert>,
    ) {
        if let Some(rule) = &mut self.close_wait {
            rule.table(now_ns, waiting, alerts);
        }
        if let Some(rule) = &mut self.fin_wait_2 {
            rule.table(now_ns, waiting, alerts);
        }
        self.tick(now_ns, settled_ns, alerts);
    }

    /// Time passed: windows slide and quiet subjects resolve.
    ///
    /// The rules that count records see time only up to `settled_ns`, by which every record
    /// that ended was handed in (`Tracker::settled`). A record reaches them after its socket's
    /// grace period, and up to 3 s more when it waits for its other end: deciding at `now_ns`
    /// could resolve a storm and then be handed a record that ended before the decision, and
    /// the storm would fire again, stamped before its own resolve (seen: a lossy transfer's
    /// record 35 ms after its `retransmit_storm` resolved). A resolve keeps the time the
    /// window went quiet; only its notice can come later.
    pub fn tick(&mut self, now_ns: u64, settled_ns: u64, alerts: &mut Vec<Alert>) {
        let settled = settled_ns.min(now_ns);
        if let Some(rule) = &mut self.connect_failures {
            rule.tick(settled, alerts);
        }
        if let Some(rule) = &mut self.rst_storm {
            rule.tick(settled, alerts);
        }
        if let Some(rule) = &mut self.retransmit_storm {
            rule.tick(settled, alerts);
        }
        if let Some(rule) = &mut self.tls_failures {
            rule.tick(settled, alerts);
        }
        if let Some(rule) = &mut self.event_loss {
            rule.tick(now_ns, alerts);
        }
    }
}

const NS: u64 = 1_000_000_000;

/// `ip:port`, with brackets for IPv6.
fn endpoint((ip, port): (IpAddr, u16)) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod listener_tests;
#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod storm_tests;

#[cfg(test)]
pub(crate) mod socket_tests;
