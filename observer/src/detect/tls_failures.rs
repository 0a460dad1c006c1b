//! `tls_handshake_failures`: a burst of failed TLS handshakes with one server, from the
//! `observer.tls` records (`--tls`) with `tls.established` false. Two subjects, like
//! `rst_storm`'s: a local TLS server failing its clients' handshakes (`scope` `server`: the
//! server records of one local ip:port), or this host's clients failing towards one remote
//! server (`scope` `remote`: the client records to one ip:port). An expired or wrong
//! certificate, a CA missing from a trust store, protocol versions or ciphers the two ends do
//! not share. Resolved once a whole window passes without a failure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::{
    Alert, Status, Subject, endpoint,
    rate::{self, Change, Rate},
    window::Item,
};
use crate::{
    tls::{TlsRecord, TlsRole},
    track::record::{Process, Uid, ends_of},
};

pub const DEFAULT_COUNT: u64 = 5;
pub const DEFAULT_WINDOW_S: u64 = 10;

/// Fires at `count` failed handshakes with one server within the window.
pub type Config = rate::CountConfig;

#[derive(Debug, Clone)]
struct Failure {
    uid: Option<Uid>,
    process: Option<Process>,
    server_name: Option<String>,
    error: String,
}

/// (netns, server ip, server port, this end is the server).
type Key = (u32, IpAddr, u16, bool);

#[derive(Debug)]
pub struct Rule {
    config: Config,
    servers: Rate<Key, Failure>,
}

impl Rule {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            servers: Rate::counting(config),
        }
    }

    /// One handshake record: counted when it did not establish.
    pub fn record(&mut self, t: &TlsRecord, alerts: &mut Vec<Alert>) {
        if t.facts.established {
            return;
        }
        let (Some(role), Some(tuple)) = (t.facts.role, t.tuple.as_ref()) else {
            return;
        };
        let (local, remote) = ends_of(tuple);
        let server_end = role == TlsRole::Server;
        let (ip, port) = if server_end { local } else { remote };
        let key = (t.netns, ip, port, server_end);
        let item = Item {
            ts_ns: t.end_ns,
            weight: 1,
            data: Failure {
                uid: t.uid,
                process: t.process.map(|p| Process {
                    pid: p.pid,
                    uid: 0,
                    comm: p.comm,
                }),
                server_name: t.facts.server_name.clone(),
                error: t
                    .facts
                    .error
                    .clone()
                    .unwrap_or_else(|| "not established".to_owned()),
            },
        };
        self.servers
            .push(key, item, |ch| alert(&self.config, ch), alerts);
    }

    /// Resolves the servers without a failure for a whole window before `now_ns`.
    pub fn tick(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        self.servers
            .tick(now_ns, |ch| alert(&self.config, ch), alerts);
    }
}

fn alert(config: &Config, ch: &Change<Key, Failure>) -> Alert {
    let (netns, ip, port, server_end) = ch.key;
    let in_window = ch.in_window();
    let observed = in_window.len() as u64;
    let last = ch.last();
    let process = last.and_then(|f| f.process);
    let server_name = last.and_then(|f| f.server_name.clone());
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &in_window {
        *errors.entry(f.error.as_str()).or_default() += 1;
    }
    let server = endpoint((ip, port));
    let named = server_name
        .as_deref()
        .map_or_else(String::new, |n| format!(" (SNI {n})"));
    let what = if server_end {
        format!("the TLS server {server}{named} failed {observed} handshakes with its clients")
    } else {
        format!("{observed} TLS handshakes to {server}{named} failed")
    };
    let reason = match ch.status {
        Status::Firing => format!(
            "{what} within {} s ({}): check the certificate chain and its CA, its names and \
             dates, and the protocol versions and ciphers both ends accept",
            config.window_s,
            errors
                .iter()
                .map(|(e, n)| format!("{n} × {e}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Status::Resolved => format!(
            "no failed TLS handshake with {server}{named} for {} s ({} failed while firing)",
            config.window_s,
            ch.total()
        ),
    };
    let mut evidence = BTreeMap::new();
    evidence.insert("scope", json!(if server_end { "server" } else { "remote" }));
    evidence.insert("errors", json!(errors));
    evidence.insert("total", json!(ch.total()));
    if let Some(name) = server_name {
        evidence.insert("server_name", json!(name));
    }
    Alert {
        rule: "tls_handshake_failures",
        status: ch.status,
        ts_ns: ch.ts_ns,
        severity: 3,
        reason,
        subject: Subject::at(netns, process, (ip, port)),
        observed,
        threshold: config.count,
        window_s: config.window_s,
        evidence,
        samples: rate::newest(&in_window, |f| f.uid),
    }
}
