//! The `observer.tls` line, and the `tls` object it shares with the connection line. ECS names
//! (`tls.version`, `tls.cipher`, `tls.client.server_name`, …) plus the observer's own
//! (`tls.handshake_duration_us`, `tls.library`, `tls.error`, `tls.role`, `tls.source`).

use std::net::IpAddr;

use serde::Serialize;

use super::{
    ndjson::{Head, wall},
    timefmt::Rfc3339,
};
use crate::{
    tls::{TlsFacts, TlsRecord, TlsRole, names},
    track::record::{Uid, ends_of},
};

#[derive(Serialize)]
pub struct TlsClient<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    alpn_offered: &'a [String],
}

/// `tls.*`.
#[derive(Serialize)]
pub struct TlsFields<'a> {
    established: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cipher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    curve: Option<String>,
    client: TlsClient<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_duration_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    source: &'static str,
}

#[must_use]
pub fn fields(f: &TlsFacts) -> TlsFields<'_> {
    TlsFields {
        established: f.established,
        version: f.version.and_then(names::version),
        version_protocol: f.version.map(names::version_protocol),
        cipher: f.cipher.map(names::cipher),
        curve: f.curve.map(names::group),
        client: TlsClient {
            server_name: f.server_name.as_deref(),
            alpn_offered: &f.alpn_offered,
        },
        next_protocol: f.next_protocol.as_deref(),
        resumed: f.resumed,
        handshake_duration_us: f.handshake_duration_us,
        library: f.library.as_deref(),
        role: f.role.map(TlsRole::as_str),
        error: f.error.as_deref(),
        source: f.source,
    }
}

#[derive(Serialize)]
struct Event {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    types: [&'static str; 1],
    dataset: &'static str,
    action: &'static str,
    outcome: &'static str,
    start: Rfc3339,
    end: Rfc3339,
    duration: u64,
}

#[derive(Serialize)]
struct Conn<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    cookie: u64,
    netns: u32,
}

#[derive(Serialize)]
struct Thread {
    id: u32,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    thread: Thread,
}

#[derive(Serialize)]
struct End {
    ip: IpAddr,
    port: u16,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    head: Head<'a, Event>,
    conn: Conn<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<End>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<End>,
    tls: TlsFields<'a>,
}

/// Appends the line (without its newline) to `buf`.
///
/// # Errors
/// Only if serialisation fails, which these types never do.
pub fn write(
    r: &TlsRecord,
    host: &str,
    boot_to_unix_ns: i64,
    buf: &mut Vec<u8>,
) -> serde_json::Result<()> {
    let ts = |ns: u64| Rfc3339::from_unix_ns(wall(ns, boot_to_unix_ns));
    // The originator is the client, as in the connection record.
    let (source, destination) = match r.tuple.as_ref().map(ends_of) {
        Some((local, remote)) => {
            let end = |(ip, port)| Some(End { ip, port });
            if r.facts.role == Some(TlsRole::Server) {
                (end(remote), end(local))
            } else {
                (end(local), end(remote))
            }
        }
        None => (None, None),
    };
    let line = Line {
        head: Head::new(
            ts(r.end_ns),
            Event {
                kind: "event",
                category: ["network"],
                types: ["protocol"],
                dataset: "observer.tls",
                action: "tls_handshake",
                outcome: if r.facts.established {
                    "success"
                } else {
                    "failure"
                },
                start: ts(r.start_ns),
                end: ts(r.end_ns),
                duration: r.end_ns.saturating_sub(r.start_ns),
            },
            host,
        ),
        conn: Conn {
            uid: r.uid.as_ref().map(Uid::as_str),
            cookie: r.cookie,
            netns: r.netns,
        },
        process: r.process.as_ref().map(|p| Process {
            pid: p.pid,
            name: p.name(),
            thread: Thread { id: p.tid },
        }),
        source,
        destination,
        tls: fields(&r.facts),
    };
    serde_json::to_writer(buf, &line)
}
