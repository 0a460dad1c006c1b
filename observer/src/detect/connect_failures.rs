//! `connect_failures`, per destination: a burst of refused or timed-out `connect()`s to one
//! (netns, ip, port), from closed client records (`conn.close_reason` `refused` or `timeout`).
//! A dead backend or a firewall dropping SYNs shows here before anyone reads a log. Fires at
//! `count` failures to one destination within the window; resolved once a whole window passes
//! without a failure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::{
    Alert, Status, Subject, endpoint,
    rate::{self, Change, Rate},
    window::Item,
};
use crate::track::record::{ConnRecord, Process, RecordKind, Role, Uid};

pub const DEFAULT_COUNT: u64 = 5;
pub const DEFAULT_WINDOW_S: u64 = 10;

pub type Config = rate::CountConfig;

#[derive(Debug, Clone, Copy)]
struct Failure {
    uid: Uid,
    process: Option<Process>,
    timeout: bool,
}

/// (netns, ip, port) of the destination.
type Key = (u32, IpAddr, u16);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    dests: Rate<Key, Failure>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            dests: Rate::counting(config),
        }
    }

    /// One connection record: counted when it is a client's failed connect.
    pub fn record(&mut self, c: &ConnRecord, alerts: &mut Vec<Alert>) {
        let timeout = match c.close_reason {
            "refused" => false,
            "timeout" if c.conn_state == "S0" => true,
            _ => return,
        };
        if c.kind != RecordKind::Closed || c.role != Role::Client {
            return;
        }
        let item = Item {
            ts_ns: c.end_ns,
            weight: 1,
            data: Failure {
                uid: c.uid,
                process: c.process,
                timeout,
            },
        };
        let key = (c.netns, c.destination.ip, c.destination.port);
        self.dests
            .push(key, item, |ch| alert(&self.config, ch), alerts);
    }

    /// Resolves the destinations without a failure for a whole window before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        self.dests
            .tick(now_ns, |ch| alert(&self.config, ch), alerts);
    }
}

fn alert(config: &Config, ch: &Change<Key, Failure>) -> Alert {
    let (netns, ip, port) = ch.key;
    let in_window = ch.in_window();
    let timeouts = in_window.iter().filter(|f| f.timeout).count() as u64;
    let observed = in_window.len() as u64;
    // The process that failed most recently names the subject.
    let process = ch.last().and_then(|f| f.process);
    let target = endpoint((ip, port));
    let who = process.map_or_else(String::new, |p| {
        format!(" from {} (pid {})", p.name(), p.pid)
    });
    let reason = match ch.status {
        Status::Firing => format!(
            "{observed} connects to {target}{who} failed within {} s ({} refused, {timeouts} \
                 timed out): check that the service at {target} is up and that no firewall \
                 drops its SYNs",
            config.window_s,
            observed - timeouts,
        ),
        Status::Resolved => format!(
            "no failed connect to {target} for {} s ({} failed while firing)",
            config.window_s,
            ch.total()
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("refused", json!(observed - timeouts));
    evidence.insert("timeouts", json!(timeouts));
    evidence.insert("total", json!(ch.total()));
    Alert {
        rule: "connect_failures",
        status: ch.status,
        ts_ns: ch.ts_ns,
        severity: 3,
        reason,
        subject: Subject::at(netns, process, (ip, port)),
        observed,
        threshold: config.count,
        window_s: config.window_s,
        evidence,
        samples: rate::newest(&in_window, |f| Some(f.uid)),
    }
}
