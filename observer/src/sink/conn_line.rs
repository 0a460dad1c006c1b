//! The `observer.connection` line, written by hand: it is one line per socket, and serde's
//! general path spent most of its time escaping keys and values that never need it. Field
//! order and number formatting match `serde_json`'s exactly (the golden replay test checks it
//! byte for byte); only the host name and the process name, which can hold anything, go
//! through `serde_json`'s escaping.

use std::{io::Write as _, net::IpAddr};

use super::{
    community_id,
    ndjson::{SCHEMA_VERSION, errno_name, wall},
    timefmt::Rfc3339,
};
use crate::track::{
    lifecycle::state_name,
    record::{ConnRecord, End, RecordKind},
};

/// Appends the line (without its newline) to `buf`.
pub fn write(c: &ConnRecord, host: &str, boot_to_unix_ns: i64, buf: &mut Vec<u8>) {
    let ts = |ns: u64| Rfc3339::from_unix_ns(wall(ns, boot_to_unix_ns));
    let end = ts(c.end_ns);
    let outcome = if c.established() {
        "success"
    } else {
        "failure"
    };
    raw(buf, r#"{"@timestamp":""#);
    raw(buf, end.as_str());
    raw(buf, r#"","schema_version":""#);
    raw(buf, SCHEMA_VERSION);
    let closed = c.kind == RecordKind::Closed;
    raw(
        buf,
        r#"","event":{"kind":"event","category":["network"],"type":["connection",""#,
    );
    raw(buf, if closed { "end" } else { "info" });
    raw(buf, r#""],"dataset":"observer.connection","action":""#);
    raw(buf, c.kind.action());
    raw(buf, r#"","outcome":""#);
    raw(buf, outcome);
    raw(buf, r#"","start":""#);
    raw(buf, ts(c.start_ns).as_str());
    if closed {
        raw(buf, r#"","end":""#);
        raw(buf, end.as_str());
    }
    raw(buf, r#"","duration":"#);
    num(buf, c.end_ns.saturating_sub(c.start_ns));
    raw(buf, r#"},"host":{"name":"#);
    escaped(buf, host);
    raw(buf, r#"},"conn":{"uid":""#);
    conn(c, buf, &ts);
    raw(buf, r#"},"source":"#);
    end_fields(buf, &c.source);
    raw(buf, r#","destination":"#);
    end_fields(buf, &c.destination);
    raw(buf, r#","network":{"transport":"tcp","type":""#);
    raw(buf, if c.ipv6 { "ipv6" } else { "ipv4" });
    raw(buf, r#"","iana_number":"6","community_id":""#);
    let community = community_id::tcp(
        0,
        (c.source.ip, c.source.port),
        (c.destination.ip, c.destination.port),
    );
    raw(buf, community.as_str());
    raw(buf, r#""},"tcp":"#);
    tail(c, buf);
}

/// The `conn` object's members, after its `uid`'s opening quote.
fn conn(c: &ConnRecord, buf: &mut Vec<u8>, ts: &impl Fn(u64) -> Rfc3339) {
    raw(buf, c.uid.as_str());
    raw(buf, r#"","role":""#);
    raw(buf, c.role.as_str());
    raw(buf, r#"","state":""#);
    raw(buf, c.conn_state);
    raw(buf, r#"","history":""#);
    raw(buf, c.history.as_str());
    raw(buf, r#"","close_initiator":""#);
    raw(buf, c.close_initiator);
    raw(buf, r#"","close_reason":""#);
    raw(buf, c.close_reason);
    raw(buf, r#"","transitions":["#);
    for (i, step) in c.lifecycle.steps().iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        raw(buf, r#"{"state":""#);
        raw(buf, state_name(step.state));
        raw(buf, r#"","ts":""#);
        raw(buf, ts(step.ts_ns).as_str());
        raw(buf, r#""}"#);
    }
    raw(buf, r#"],"state_durations_ms":{"#);
    durations(c, buf);
    raw(buf, r#"},"final_state":""#);
    raw(buf, state_name(c.lifecycle.final_state()));
    raw(buf, r#"","time_wait":"#);
    boolean(buf, c.lifecycle.time_wait);
    raw(buf, r#","fin_received":"#);
    boolean(buf, c.lifecycle.fin_received);
    raw(buf, r#","resets_sent":"#);
    num(buf, c.resets_sent);
    raw(buf, r#","resets_received":"#);
    num(buf, c.resets_received);
    if let Some(reason) = c.rst_reason {
        raw(buf, r#","rst_reason":"#);
        num(buf, reason);
    }
    if let Some(error) = errno_name(c.sk_err) {
        raw(buf, r#","error":""#);
        raw(buf, error);
        buf.push(b'"');
    }
    if let Some(source) = c.owner_source {
        raw(buf, r#","owner_source":""#);
        raw(buf, source);
        buf.push(b'"');
    }
    raw(buf, r#","pre_existing":"#);
    boolean(buf, c.pre_existing);
    if c.lifecycle.truncated > 0 {
        raw(buf, r#","transitions_truncated":"#);
        num(buf, c.lifecycle.truncated);
    }
    raw(buf, r#","cookie":"#);
    num(buf, c.cookie);
    raw(buf, r#","netns":"#);
    num(buf, c.netns);
    if let Some(peer) = &c.peer {
        raw(buf, r#","peer_uid":""#);
        raw(buf, peer.uid.as_str());
        buf.push(b'"');
    }
}

/// `tcp`, `process` and `user`, and the closing brace.
fn tail(c: &ConnRecord, buf: &mut Vec<u8>) {
    raw(buf, r#"{"retransmits":"#);
    num(buf, c.retransmits.total());
    raw(buf, r#","retransmits_syn":"#);
    num(buf, c.retransmits.syn);
    raw(buf, r#","retransmits_synack":"#);
    num(buf, c.retransmits.synack);
    raw(buf, r#","retransmits_data":"#);
    num(buf, c.retransmits.data);
    raw(buf, r#","srtt_us":"#);
    num(buf, c.srtt_us);
    if let Some(rtt) = c.handshake_rtt_us {
        raw(buf, r#","handshake_rtt_us":"#);
        num(buf, rtt);
    }
    if let Some(wait) = c.accept_wait_us {
        raw(buf, r#","accept_wait_us":"#);
        num(buf, wait);
    }
    buf.push(b'}');
    if let Some(p) = &c.process {
        raw(buf, r#","process":{"pid":"#);
        num(buf, p.pid);
        raw(buf, r#","name":"#);
        escaped(buf, p.name());
        if let Some(exe) = &c.executable {
            raw(buf, r#","executable":"#);
            escaped(buf, exe);
        }
        if let Some(cgroup) = &c.cgroup {
            raw(buf, r#","cgroup":"#);
            escaped(buf, &cgroup.path);
        }
        raw(buf, r#"},"user":{"id":""#);
        num(buf, p.uid);
        raw(buf, r#""}"#);
        if let Some(id) = c.cgroup.as_ref().and_then(|g| g.container_id.as_deref()) {
            raw(buf, r#","container":{"id":"#);
            escaped(buf, id);
            buf.push(b'}');
        }
    }
    if let Some(peer) = c.peer.as_ref().and_then(|p| p.process.as_ref()) {
        raw(buf, r#","peer":{"process":{"pid":"#);
        num(buf, peer.pid);
        raw(buf, r#","name":"#);
        escaped(buf, peer.name());
        raw(buf, "}}");
    }
    if let Some(tls) = &c.tls {
        raw(buf, r#","tls":"#);
        // Serialising these types cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &super::tls_line::fields(tls));
    }
    buf.push(b'}');
}

/// `conn.state_durations_ms`, in the order the states were entered: whole microseconds written
/// as milliseconds, the way `serde_json` writes the same f64 (shortest form, `N.0` when whole).
fn durations(c: &ConnRecord, buf: &mut Vec<u8>) {
    let d = c.lifecycle.durations_ns();
    let mut done = [false; 13];
    let mut first = true;
    for step in c.lifecycle.steps() {
        let i = usize::from(step.state).min(12);
        let Some(ns) = d[i] else { continue };
        if std::mem::replace(&mut done[i], true) {
            continue;
        }
        if !std::mem::replace(&mut first, false) {
            buf.push(b',');
        }
        buf.push(b'"');
        raw(buf, state_name(step.state));
        raw(buf, r#"":"#);
        let us = ns / 1_000;
        num(buf, us / 1_000);
        buf.push(b'.');
        let frac = us % 1_000;
        if frac == 0 {
            buf.push(b'0');
        } else {
            let digits = [frac / 100, frac / 10 % 10, frac % 10];
            let keep = if digits[2] != 0 {
                3
            } else if digits[1] != 0 {
                2
            } else {
                1
            };
            for d in &digits[..keep] {
                // A decimal digit always fits in a byte.
                buf.push(b'0' + u8::try_from(*d).unwrap_or(0));
            }
        }
    }
}

fn end_fields(buf: &mut Vec<u8>, e: &End) {
    raw(buf, r#"{"ip":""#);
    ip(buf, e.ip);
    raw(buf, r#"","port":"#);
    num(buf, e.port);
    raw(buf, r#","bytes":"#);
    num(buf, e.bytes);
    raw(buf, r#","packets":"#);
    num(buf, e.packets);
    buf.push(b'}');
}

fn raw(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
}

fn num(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(buf: &mut Vec<u8>, b: bool) {
    raw(buf, if b { "true" } else { "false" });
}

fn ip(buf: &mut Vec<u8>, ip: IpAddr) {
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{ip}");
}

/// A JSON string of arbitrary content, escaped by `serde_json`.
fn escaped(buf: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}
