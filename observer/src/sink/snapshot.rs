//! `observer snapshot` output: one `observer.snapshot` NDJSON line per socket, or a table
//! made from those lines (so the agent's answer and a standalone listing print alike).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    ndjson::{SCHEMA_VERSION, wall},
    timefmt::Rfc3339,
};
use crate::track::{lifecycle::state_name, snapshot::Row};

fn ms(ns: u64) -> f64 {
    // Microsecond precision is plenty for ages (and exact in an f64 for 285 years).
    std::time::Duration::from_micros(ns / 1_000).as_secs_f64() * 1_000.0
}

/// The NDJSON object of one row, taken at `now_ns` (`CLOCK_BOOTTIME`).
#[must_use]
pub fn json(row: &Row, host: &str, now_ns: u64, boot_to_unix_ns: i64) -> Value {
    let ts = Rfc3339::from_unix_ns(wall(now_ns, boot_to_unix_ns));
    let mut v = json!({
        "@timestamp": ts.as_str(),
        "schema_version": SCHEMA_VERSION,
        "event": {
            "kind": "state",
            "category": ["network"],
            "type": ["connection", "info"],
            "dataset": "observer.snapshot",
        },
        "host": {"name": host},
        "conn": {
            "uid": row.uid.as_str(),
            "state": state_name(row.state),
            "age_ms": row.age_ns.map(ms),
            "age_min_ms": row.age_min_ns.map(ms),
            "in_state_ms": row.in_state_ns.map(ms),
            "netns": row.netns,
            "cookie": row.cookie,
        },
        "local": {"ip": row.local.ip().to_string(), "port": row.local.port()},
        "remote": {"ip": row.remote.ip().to_string(), "port": row.remote.port()},
        "user": {"id": row.uid_owner.to_string()},
        "tcp": {
            "bytes_sent": row.bytes.map(|b| b.0),
            "bytes_received": row.bytes.map(|b| b.1),
            "srtt_us": row.srtt_us,
            "retransmits": row.retransmits,
        },
    });
    if let Some(p) = &row.process {
        v["process"] = json!({
            "pid": p.pid,
            "name": p.name(),
            "executable": row.executable.as_deref(),
        });
        v["conn"]["owner_source"] = json!(row.owner_source);
    }
    v
}

/// The rows as a table, one socket a line.
#[must_use]
pub fn table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<22} {:<28} {:<28} {:<12} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7}\n",
        "OWNER",
        "LOCAL",
        "REMOTE",
        "STATE",
        "AGE",
        "IN STATE",
        "SENT",
        "RECEIVED",
        "RTT",
        "RETRANS"
    );
    let get = |v: &Value, path: &str| path.split('.').fold(v, |v, k| &v[k]).clone();
    let num = |v: Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
    for r in rows {
        let owner = match (get(r, "process.pid").as_u64(), get(r, "process.name")) {
            (Some(pid), Value::String(name)) => format!("{pid}/{name}"),
            _ => "-".to_owned(),
        };
        let addr = |side: &str| {
            let ip = get(r, &format!("{side}.ip"));
            let ip = ip.as_str().unwrap_or("?");
            let port = get(r, &format!("{side}.port"));
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        let age = match (
            get(r, "conn.age_ms").as_f64(),
            get(r, "conn.age_min_ms").as_f64(),
        ) {
            (Some(ms), _) => duration(ms),
            (None, Some(min)) => format!(">{}", duration(min)),
            (None, None) => "-".to_owned(),
        };
        let in_state = get(r, "conn.in_state_ms")
            .as_f64()
            .map_or_else(|| "-".to_owned(), duration);
        let rtt = get(r, "tcp.srtt_us")
            .as_f64()
            .map_or_else(|| "-".to_owned(), |us| duration(us / 1_000.0));
        let _ = writeln!(
            out,
            "{:<22} {:<28} {:<28} {:<12} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7}",
            owner,
            addr("local"),
            addr("remote"),
            get(r, "conn.state").as_str().unwrap_or("?"),
            age,
            in_state,
            num(get(r, "tcp.bytes_sent")),
            num(get(r, "tcp.bytes_received")),
            rtt,
            num(get(r, "tcp.retransmits")),
        );
    }
    out
}

/// A duration in milliseconds, in the unit a human reads fastest.
fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1_000.0)
    } else if ms < 1_000.0 {
        format!("{ms:.1}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1_000.0)
    } else if ms < 3_600_000.0 {
        format!("{:.1}m", ms / 60_000.0)
    } else {
        format!("{:.1}h", ms / 3_600_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.042), "42µs");
        assert_eq!(duration(12.34), "12.3ms");
        assert_eq!(duration(4_500.0), "4.5s");
        assert_eq!(duration(90_000.0), "1.5m");
        assert_eq!(duration(7_200_000.0), "2.0h");
    }

    #[test]
    fn a_table_row_per_socket() {
        let row = json!({
            "conn": {"state": "ESTABLISHED", "age_ms": 1500.0, "in_state_ms": 1499.5},
            "local": {"ip": "::1", "port": 80},
            "remote": {"ip": "::1", "port": 40000},
            "process": {"pid": 7, "name": "nginx"},
            "tcp": {"bytes_sent": 10, "bytes_received": 20, "srtt_us": 30, "retransmits": 0},
        });
        let t = table(&[row]);
        let line = t.lines().nth(1).expect("a row");
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "7/nginx",
                "[::1]:80",
                "[::1]:40000",
                "ESTABLISHED",
                "1.5s",
                "1.5s",
                "10",
                "20",
                "30µs",
                "0"
            ]
        );
    }
}
