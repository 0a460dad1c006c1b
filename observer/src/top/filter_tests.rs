//! `top`'s `/` on the shared language (`crate::filter`) against the matcher it had before, kept
//! here as the oracle: every expression of the old grammar (keys and bare words, one or two
//! terms) must pick the same rows in every view, but for the two changes marked `CHANGED`.

use std::net::{IpAddr, SocketAddr};

use observer_common::tcp_state;

use super::{
    alerts::Anomaly,
    model::{Conn, Proc},
    select::Filter,
    tests::{conn, with_alerts},
};

/// The old `Filter::parse`: whitespace-separated terms, `key:value` for seven keys, the rest
/// bare words, lowercased.
fn old_parse(text: &str) -> Vec<(Option<String>, String)> {
    text.split_whitespace()
        .map(|t| match t.split_once(':') {
            Some((k, v))
                if matches!(
                    k,
                    "port" | "sport" | "dport" | "pid" | "comm" | "state" | "addr"
                ) =>
            {
                (Some(k.to_owned()), v.to_ascii_lowercase())
            }
            _ => (None, t.to_ascii_lowercase()),
        })
        .collect()
}

/// CHANGED: an `addr:` value that is a whole IP or IP and port is compared exactly (it was a
/// substring: `addr:10.0.0.5` found 10.0.0.50 too).
fn exact_addr(v: &str, ends: &[SocketAddr]) -> Option<bool> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ends.iter().any(|e| e.ip() == ip));
    }
    v.parse::<SocketAddr>().ok().map(|s| ends.contains(&s))
}

fn old_state(c: &Conn, v: &str) -> bool {
    let name = c.state_name().to_ascii_lowercase();
    let ss = name.replace('_', "-").replace("established", "estab");
    name.contains(v) || ss.contains(v)
}

fn old_conn(terms: &[(Option<String>, String)], c: &Conn) -> bool {
    terms.iter().all(|(key, v)| {
        let v = v.as_str();
        let port = |p: u16| v.parse::<u16>().is_ok_and(|n| n == p);
        let pid = || c.pid.is_some_and(|p| p.to_string() == v);
        let comm = || c.comm.to_ascii_lowercase().contains(v);
        let addr = || {
            c.local.to_string().to_ascii_lowercase().contains(v)
                || c.remote.to_string().to_ascii_lowercase().contains(v)
        };
        match key.as_deref() {
            Some("port") => port(c.local.port()) || port(c.remote.port()),
            Some("sport") => port(c.local.port()),
            Some("dport") => port(c.remote.port()),
            Some("pid") => pid(),
            Some("comm") => comm(),
            Some("state") => old_state(c, v),
            Some("addr") => exact_addr(v, &[c.local, c.remote]).unwrap_or_else(addr),
            _ => {
                pid()
                    || comm()
                    || old_state(c, v)
                    || addr()
                    || c.sni().is_some_and(|s| s.to_ascii_lowercase().contains(v))
            }
        }
    })
}

fn old_proc(terms: &[(Option<String>, String)], p: &Proc) -> bool {
    terms.iter().all(|(key, v)| match key.as_deref() {
        Some("pid") => p.pid.is_some_and(|pid| pid.to_string() == *v),
        Some("comm") => p.comm.to_ascii_lowercase().contains(v.as_str()),
        None => {
            p.comm.to_ascii_lowercase().contains(v.as_str())
                || p.pid.is_some_and(|pid| pid.to_string() == *v)
        }
        Some(_) => true,
    })
}

fn old_anomaly(terms: &[(Option<String>, String)], a: &Anomaly) -> bool {
    let s = &a.alert.subject;
    let status = if a.firing() { "firing" } else { "resolved" };
    terms.iter().all(|(key, v)| {
        let pid = || s.process.is_some_and(|p| p.pid.to_string() == *v);
        let comm = || {
            s.process
                .is_some_and(|p| p.name().to_ascii_lowercase().contains(v.as_str()))
        };
        let port = || {
            v.parse::<u16>()
                .is_ok_and(|n| s.destination.is_some_and(|d| d.1 == n && n != 0))
        };
        // CHANGED: the destination's text is `ip:port` (as in the Connections view), not the
        // IP alone.
        let addr = || {
            s.destination.is_some_and(|(ip, port)| {
                let text = if port == 0 {
                    ip.to_string()
                } else {
                    SocketAddr::new(ip, port).to_string()
                };
                text.contains(v.as_str())
            })
        };
        // CHANGED, as for connections; a whole host (port 0) has no port to compare.
        let exact = || {
            if let Ok(want) = v.parse::<IpAddr>() {
                return Some(s.destination.is_some_and(|(ip, _)| ip == want));
            }
            v.parse::<SocketAddr>().ok().map(|want| {
                s.destination
                    .is_some_and(|(ip, port)| port != 0 && SocketAddr::new(ip, port) == want)
            })
        };
        match key.as_deref() {
            Some("pid") => pid(),
            Some("comm") => comm(),
            Some("port" | "dport") => port(),
            Some("addr") => exact().unwrap_or_else(addr),
            Some("state") => status.contains(v.as_str()),
            Some(_) => true,
            None => {
                pid()
                    || comm()
                    || addr()
                    || status.contains(v.as_str())
                    || a.alert.rule.contains(v.as_str())
            }
        }
    })
}

/// Terms of the old grammar over the test model's values, and a few that never match.
fn terms() -> Vec<String> {
    let values = [
        "443",
        "80",
        "8080",
        "0",
        "200",
        "300",
        "5432",
        "nginx",
        "NGI",
        "curl",
        "python",
        "estab",
        "close-wait",
        "LISTEN",
        "wait",
        "firing",
        "resolved",
        "93.184",
        "10.0.0",
        "10.0.0.9",
        "10.0.0.5",
        "10.0.0.1:443",
        "[::1]:443",
        "::1",
        "",
        "abc",
        "connect",
        "example.com",
    ];
    let keys = [
        "", "port:", "sport:", "dport:", "pid:", "comm:", "state:", "addr:", "PORT:", "foo:",
    ];
    keys.iter()
        .flat_map(|k| values.iter().map(move |v| format!("{k}{v}")))
        .filter(|t| !t.is_empty())
        .collect()
}

#[test]
fn every_old_expression_picks_the_same_rows() {
    let mut m = with_alerts();
    m.conns.push(conn(
        5,
        500,
        "redis",
        "[::1]:6379",
        "[::1]:443",
        tcp_state::ESTABLISHED,
    ));
    m.conns.push(conn(
        6,
        600,
        "x",
        "10.0.0.50:22",
        "10.0.0.55:40000",
        tcp_state::SYN_RECV,
    ));
    let procs = m.processes();
    let terms = terms();
    let check = |text: &str| {
        let (old, new) = (old_parse(text), Filter::parse(text));
        for c in &m.conns {
            assert_eq!(
                new.admits(c),
                old_conn(&old, c),
                "{text:?} on conn {}",
                c.cookie
            );
        }
        for p in &procs {
            assert_eq!(new.admits_proc(p), old_proc(&old, p), "{text:?} on {p:?}");
        }
        for a in &m.anomalies {
            assert_eq!(
                new.admits_anomaly(a),
                old_anomaly(&old, a),
                "{text:?} on {}",
                a.alert.rule
            );
        }
    };
    for (i, a) in terms.iter().enumerate() {
        check(a);
        // Pairs: every term with a spread of others.
        for b in terms.iter().skip(i % 7).step_by(7) {
            check(&format!("{a} {b}"));
        }
    }
}
