//! The `observer.anomaly` line (docs/anomalies.md, docs/schema/anomaly.json): ECS `event.*`,
//! `rule.id`, the subject (`process.*`, `destination.*`), and the evidence under `anomaly.*`.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use serde_json::Value;

use super::{
    ndjson::{Head, wall},
    timefmt::Rfc3339,
};
use crate::detect::Alert;

#[derive(Serialize)]
struct Event {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    types: [&'static str; 1],
    dataset: &'static str,
    action: &'static str,
    severity: u8,
    reason: String,
}

#[derive(Serialize)]
struct Rule {
    id: &'static str,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    name: &'a str,
}

#[derive(Serialize)]
struct Destination {
    ip: IpAddr,
    /// Absent when the subject is a whole remote host.
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

#[derive(Serialize)]
struct Anomaly<'a> {
    status: &'static str,
    observed: u64,
    threshold: u64,
    window_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    #[serde(flatten)]
    evidence: &'a BTreeMap<&'static str, Value>,
}

#[derive(Serialize)]
struct Conn {
    uids: Vec<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    head: Head<'a, Event>,
    rule: Rule,
    anomaly: Anomaly<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<Destination>,
    conn: Conn,
}

/// Appends one alert line (without its newline) to `buf`.
///
/// # Errors
/// Only if serialisation fails, which these types never do.
pub fn write(
    a: &Alert,
    host: &str,
    boot_to_unix_ns: i64,
    buf: &mut Vec<u8>,
) -> serde_json::Result<()> {
    let line = Line {
        head: Head::new(
            Rfc3339::from_unix_ns(wall(a.ts_ns, boot_to_unix_ns)),
            Event {
                kind: "alert",
                category: ["network"],
                types: ["info"],
                dataset: "observer.anomaly",
                action: a.status.as_str(),
                severity: a.severity,
                reason: a.reason.clone(),
            },
            host,
        ),
        rule: Rule { id: a.rule },
        anomaly: Anomaly {
            status: a.status.as_str(),
            observed: a.observed,
            threshold: a.threshold,
            window_s: a.window_s,
            netns: a.subject.netns,
            evidence: &a.evidence,
        },
        process: a.subject.process.as_ref().map(|p| Process {
            pid: p.pid,
            name: p.name(),
        }),
        destination: a.subject.destination.map(|(ip, port)| Destination {
            ip,
            port: (port != 0).then_some(port),
        }),
        conn: Conn {
            uids: a.samples.iter().map(|u| u.as_str().to_owned()).collect(),
        },
    };
    serde_json::to_writer(buf, &line)
}
