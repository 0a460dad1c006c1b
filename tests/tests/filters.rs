//! One filter language (docs/filters.md) for each output's `filter`, `--filter` on `run`,
//! `replay` and `snapshot`: each output gets exactly the records its expression admits, and
//! the observer's own lines unless a `dataset:` term hides them.

use std::process::Command;

use observer_tests::{
    NetNs, Observer, Peer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    privileged,
};
use serde_json::Value;

fn read(path: &std::path::Path) -> Vec<Value> {
    parse_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The responder ports of a file's connection records, sorted.
fn dports(lines: &[Value]) -> Vec<u64> {
    let mut ports: Vec<u64> = of_dataset(lines, "observer.connection")
        .iter()
        .map(|r| field(r, "destination.port").as_u64().expect("a port"))
        .collect();
    ports.sort_unstable();
    ports
}

fn actions(lines: &[Value], dataset: &str) -> Vec<String> {
    of_dataset(lines, dataset)
        .iter()
        .map(|l| {
            field(l, "event.action")
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn each_output_takes_what_its_filter_admits() {
    if !privileged("each_output_takes_what_its_filter_admits") {
        return;
    }
    let ns = NetNs::new("filt");
    let (a, b, c) = (scratch("ndjson"), scratch("ndjson"), scratch("ndjson"));
    let rec = scratch("rec");
    let url = |p: &std::path::Path, filter: &str| format!("file://{}?filter={filter}", p.display());
    // The listeners first: the filters name their ports.
    let mut s1 = Peer::spawn(&ns, "srv1");
    let mut s2 = Peer::spawn(&ns, "srv2");
    let p1 = s1.port("listen 4 127.0.0.1", "port");
    let p2 = s2.port("listen 4 127.0.0.1", "port");
    let obs = Observer::start(
        &ns,
        &[
            "--record",
            rec.to_str().expect("utf-8"),
            "--sink",
            &url(&a, &format!("dport:{p1}")),
            "--sink",
            &url(&b, &format!("!dport:{p1} !dataset:observer.loss")),
            "--sink",
            &url(&c, "dataset:observer.agent"),
        ],
    );
    for (server, port) in [(&mut s1, p1), (&mut s2, p2)] {
        let mut client = Peer::spawn(&ns, "cli");
        client.ok(&format!("connect 4 127.0.0.1 {port}"));
        server.ok("accept");
        client.ok("close");
        server.ok("wait_eof");
        server.ok("close");
    }
    let _ = obs.wait_records("observer.connection", 4);
    let stopped = obs.stop();
    stopped.assert_clean();
    let (a, b, c) = (read(&a), read(&b), read(&c));
    // Both ends of the first connection, of the second, and none.
    assert_eq!(dports(&a), [u64::from(p1); 2], "{a:#?}");
    assert_eq!(dports(&b), [u64::from(p2); 2], "{b:#?}");
    assert_eq!(dports(&c), Vec::<u64>::new(), "{c:#?}");
    for (lines, name) in [(&a, "a"), (&b, "b")] {
        assert_eq!(
            actions(lines, "observer.agent"),
            ["started", "stopped"],
            "{name}: the agent's lines go everywhere"
        );
    }
    assert_eq!(actions(&c, "observer.agent"), ["started", "stopped"]);
    assert_eq!(
        actions(&a, "observer.loss"),
        ["summary"],
        "a keeps loss lines"
    );
    assert_eq!(
        actions(&b, "observer.loss"),
        Vec::<String>::new(),
        "b hid them"
    );
    assert_eq!(
        actions(&c, "observer.loss"),
        Vec::<String>::new(),
        "c names another dataset"
    );
    assert_eq!(c.len(), 2, "c holds only the two agent lines: {c:#?}");

    // `replay --filter` gives the same subset from the recording.
    let replayed = Command::new(bin())
        .args(["replay", rec.to_str().expect("utf-8"), "--filter"])
        .arg(format!("dport:{p1}"))
        .output()
        .expect("replay");
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let replayed = parse_lines(&String::from_utf8_lossy(&replayed.stdout));
    assert_eq!(dports(&replayed), [u64::from(p1); 2], "{replayed:#?}");
    let _ = std::fs::remove_file(&rec);
}

#[test]
fn snapshot_filter_keeps_the_matching_sockets() {
    if !privileged("snapshot_filter_keeps_the_matching_sockets") {
        return;
    }
    let ns = NetNs::new("filtsnap");
    let control = scratch("sock");
    let obs = Observer::start(&ns, &["--control-socket", control.to_str().expect("utf-8")]);
    let mut s1 = Peer::spawn(&ns, "snap-one");
    let mut s2 = Peer::spawn(&ns, "snap-two");
    let p1 = s1.port("listen 4 127.0.0.1", "port");
    let _p2 = s2.port("listen 4 127.0.0.1", "port");
    let snapshot = |expr: &str| {
        let out = Command::new(bin())
            .args(["snapshot", "--json", "--control-socket"])
            .arg(&control)
            .arg("--netns")
            .arg(ns.path())
            .args(["--filter", expr])
            .output()
            .expect("snapshot");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_lines(&String::from_utf8_lossy(&out.stdout))
    };
    let by_port = snapshot(&format!("sport:{p1}"));
    assert_eq!(by_port.len(), 1, "{by_port:#?}");
    assert_eq!(field(&by_port[0], "local.port"), p1);
    let by_comm = snapshot("comm:snap-two state:listen");
    assert_eq!(by_comm.len(), 1, "{by_comm:#?}");
    assert_eq!(field(&by_comm[0], "process.name"), "snap-two");
    assert_eq!(snapshot("state:established").len(), 0);
    assert_eq!(snapshot("!comm:snap-one,snap-two").len(), 0);
    drop(obs);
}

#[test]
fn a_bad_filter_is_refused_with_its_column_and_the_keys() {
    let keys = "port, sport, dport, pid, comm, state, addr, cgroup, container, dataset, sni, \
                role, netns, conn_state, rule";
    let cases: [(&[&str], String); 3] = [
        (
            &["run", "--filter", "dport:443 prot:1"],
            format!(
                "error: invalid value 'dport:443 prot:1' for '--filter <EXPR>': unknown key \
                 `prot` at column 11: the keys are {keys}"
            ),
        ),
        (
            &["run", "--sink", "stdout?filter=prot:1"],
            format!(
                "error: invalid value 'stdout?filter=prot:1' for '--sink <URL>': filter \
                 `prot:1`: unknown key `prot` at column 1: the keys are {keys}"
            ),
        ),
        (
            &["snapshot", "--filter", "prot:1"],
            format!(
                "error: invalid value 'prot:1' for '--filter <EXPR>': unknown key `prot` at \
                 column 1: the keys are {keys}"
            ),
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(bin()).args(args).output().expect("observer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().next(),
            Some(want.as_str()),
            "{args:?}: {stderr}"
        );
    }
}
