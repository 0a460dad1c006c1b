//! A stream recorded from the real kernel (`observer run --transitions --record`, the traffic of
//! tests/data/README.md) replayed through the pure pipeline: decode → track → NDJSON.

use std::path::PathBuf;

use observer::{
    recording::Replay,
    sink::ndjson::Encoder,
    track::{Filter, Tracker, record::Output},
};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Replays a recording as `observer replay` does; returns the NDJSON text.
fn replay(name: &str, filter: Filter) -> String {
    let (header, mut input) = Replay::open(&data(name)).expect("recording opens");
    let mut tracker = Tracker::new(header.boot_id_bytes(), filter, 262_144);
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let (mut outputs, mut buf, mut last) = (Vec::<Output>::new(), Vec::new(), 0);
    while let Some(event) = input.next_event().expect("frame decodes") {
        last = last.max(event.ts_ns());
        tracker.ingest(&event, &mut outputs);
        tracker.flush_due(last, &mut outputs);
    }
    tracker.finish(last, &mut outputs);
    for o in &outputs {
        encoder.write(o, &mut buf).expect("serialises");
    }
    String::from_utf8(buf).expect("utf-8")
}

fn records(text: &str, dataset: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|v| v["event"]["dataset"] == dataset)
        .collect()
}

/// (role, states, source bytes, destination bytes, resets sent, resets received, error)
type Summary<'a> = (&'a str, Vec<&'a str>, u64, u64, u64, u64, Option<&'a str>);

fn states(r: &Value) -> Vec<&str> {
    r["conn"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["state"].as_str().expect("state"))
        .collect()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of expected records")]
fn the_recorded_stream_rebuilds_every_lifecycle() {
    let text = replay(
        "mixed.rec",
        Filter {
            transitions: true,
            ..Filter::default()
        },
    );
    let conns = records(&text, "observer.connection");
    let summary: Vec<Summary> = conns
        .iter()
        .map(|r| {
            (
                r["conn"]["role"].as_str().expect("role"),
                states(r),
                r["source"]["bytes"].as_u64().expect("bytes"),
                r["destination"]["bytes"].as_u64().expect("bytes"),
                r["conn"]["resets_sent"].as_u64().expect("resets"),
                r["conn"]["resets_received"].as_u64().expect("resets"),
                r["conn"]["error"].as_str(),
            )
        })
        .collect();
    let want: Vec<Summary> = vec![
        (
            "client",
            vec![
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ],
            100,
            2000,
            0,
            0,
            None,
        ),
        (
            "server",
            vec!["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            100,
            2000,
            0,
            0,
            None,
        ),
        (
            "server",
            vec![
                "SYN_RECV",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ],
            7,
            70000,
            0,
            0,
            None,
        ),
        (
            "client",
            vec!["SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            7,
            70000,
            0,
            0,
            None,
        ),
        (
            "client",
            vec!["SYN_SENT", "CLOSE"],
            0,
            0,
            0,
            1,
            Some("ECONNREFUSED"),
        ),
        (
            "client",
            vec!["SYN_SENT", "ESTABLISHED", "CLOSE"],
            300,
            40,
            1,
            0,
            None,
        ),
        (
            "server",
            vec!["SYN_RECV", "ESTABLISHED", "CLOSE"],
            300,
            40,
            0,
            1,
            Some("ECONNRESET"),
        ),
    ];
    assert_eq!(summary, want);
    // The two ends of each connection share a Community ID; every socket has its own uid.
    let mut uids: Vec<&str> = conns
        .iter()
        .map(|r| r["conn"]["uid"].as_str().expect("uid"))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 7);
    assert_eq!(
        conns[0]["network"]["community_id"],
        conns[1]["network"]["community_id"]
    );
    assert_eq!(conns[5]["network"]["type"], "ipv6");
    // One state record per kernel transition, each joined to its connection.
    let changes = records(&text, "observer.state");
    let per_conn: usize = conns.iter().map(|r| states(r).len()).sum();
    assert_eq!(changes.len(), per_conn);
    assert!(
        changes
            .iter()
            .all(|c| uids.contains(&c["conn"]["uid"].as_str().expect("uid")))
    );
    let loss = records(&text, "observer.loss");
    assert_eq!(loss.len(), 1);
    assert_eq!(loss[0]["loss"]["total"]["ring_full"], 0);
}

#[test]
fn replay_output_is_stable() {
    // The whole NDJSON output, byte for byte: a change here is a schema change (bump
    // SCHEMA_VERSION if a field changed meaning) or a tracker regression. Regenerate with
    // `observer replay --transitions tests/data/mixed.rec > tests/data/mixed.ndjson`.
    let text = replay(
        "mixed.rec",
        Filter {
            transitions: true,
            ..Filter::default()
        },
    );
    let golden = std::fs::read_to_string(data("mixed.ndjson")).expect("golden file");
    assert_eq!(text, golden);
}

#[test]
fn filters_apply_to_recorded_streams() {
    let all = records(
        &replay("mixed.rec", Filter::default()),
        "observer.connection",
    );
    let port = all[4]["destination"]["port"].as_u64().expect("port");
    let refused = records(
        &replay(
            "mixed.rec",
            Filter {
                port: Some(u16::try_from(port).expect("port")),
                ..Filter::default()
            },
        ),
        "observer.connection",
    );
    assert_eq!(refused, vec![all[4].clone()]);
    let elsewhere = records(
        &replay(
            "mixed.rec",
            Filter {
                netns: Some(1),
                ..Filter::default()
            },
        ),
        "observer.connection",
    );
    assert!(elsewhere.is_empty());
}
