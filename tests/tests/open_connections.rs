//! Connections that are open while the observer runs: those that existed before it started
//! (seeded from `sock_diag`, owners from /proc), periodic update records, the last record at
//! shutdown, and the bound on the table of open connections.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use observer_tests::{NetNs, Observer, Peer, field, now_us, parse_ts, privileged, wait_for};
use serde_json::Value;

/// A connected client and server, `up` then `down` bytes exchanged.
fn connect(ns: &NetNs, tag: &str, up: u64, down: u64) -> (Peer, Peer, u16, u16) {
    let mut server = Peer::spawn(ns, &format!("{tag}-srv"));
    let mut client = Peer::spawn(ns, &format!("{tag}-cli"));
    let port = server.port("listen 4 127.0.0.1", "port");
    let cport = client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
    server.ok("accept");
    client.ok(&format!("send {up}"));
    assert_eq!(server.ok(&format!("recv {up}"))["got"], up);
    server.ok(&format!("send {down}"));
    assert_eq!(client.ok(&format!("recv {down}"))["got"], down);
    (client, server, port, cport)
}

fn by_role<'a>(records: &'a [Value], role: &str) -> &'a Value {
    records
        .iter()
        .find(|r| field(r, "conn.role") == role)
        .unwrap_or_else(|| panic!("no {role} record in {records:#?}"))
}

fn assert_peers(client: &Value, server: &Value) {
    for (me, other) in [(client, server), (server, client)] {
        assert_eq!(field(me, "conn.peer_uid"), field(other, "conn.uid"), "{me}");
        assert_eq!(
            field(me, "peer.process.pid"),
            field(other, "process.pid"),
            "{me}"
        );
    }
    assert_eq!(
        field(client, "network.community_id"),
        field(server, "network.community_id")
    );
}

#[test]
fn connections_open_before_start_are_seeded_with_their_owners() {
    if !privileged("connections_open_before_start_are_seeded_with_their_owners") {
        return;
    }
    let ns = NetNs::new("seed");
    let (mut client, mut server, port, cport) = connect(&ns, "seed", 100, 2000);
    let before = now_us();
    let obs = Observer::start(&ns, &[]);
    let started = parse_ts(
        field(
            obs.lines()
                .iter()
                .find(|l| field(l, "event.action") == "started")
                .expect("started"),
            "@timestamp",
        )
        .as_str()
        .expect("ts"),
    );
    // Traffic after the start counts too: the counters are the socket's whole life. (The
    // answer carries the ACK: an unanswered send may draw a tail-loss probe.)
    client.ok("send 50");
    assert_eq!(server.ok("recv 50")["got"], 50);
    server.ok("send 5");
    assert_eq!(client.ok("recv 5")["got"], 5);
    let closing = now_us();
    client.ok("close");
    assert_eq!(server.ok("wait_eof")["extra"], 0);
    ns.wait_tcp_state(cport, "fin-wait-2");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    stopped.assert_clean();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (c, s) = (by_role(&records, "client"), by_role(&records, "server"));
    for (r, owner) in [(c, &client), (s, &server)] {
        assert_eq!(field(r, "conn.pre_existing"), true, "{r}");
        assert_eq!(field(r, "event.outcome"), "success", "{r}");
        assert_eq!(field(r, "process.pid"), owner.pid, "{r}");
        assert_eq!(field(r, "process.name"), owner.comm.as_str(), "{r}");
        assert_eq!(field(r, "process.executable"), "/usr/bin/python3.11", "{r}");
        assert_eq!(field(r, "source.port"), cport, "{r}");
        assert_eq!(field(r, "destination.port"), port, "{r}");
        assert_eq!(field(r, "source.bytes"), 150, "{r}");
        assert_eq!(field(r, "destination.bytes"), 2005, "{r}");
        assert_eq!(field(r, "tcp.retransmits"), 0, "{r}");
        assert_eq!(field(r, "conn.close_reason"), "fin", "{r}");
        // The true start is unknown: the observer's start is its lower bound.
        let start = parse_ts(field(r, "event.start").as_str().expect("start"));
        assert!(before <= start && start <= closing, "{r}");
        assert!(
            start >= started,
            "start {start} before the observer started {started}: {r}"
        );
        assert_eq!(field(r, "tcp.handshake_rtt_us"), &Value::Null, "{r}");
    }
    assert_eq!(field(c, "conn.close_initiator"), "local");
    assert_eq!(field(s, "conn.close_initiator"), "remote");
    assert_eq!(field(c, "conn.state"), "S2", "{c}");
    // Picked up mid-stream: no handshake letters, as in Zeek.
    assert_eq!(field(c, "conn.history"), "DdF", "{c}");
    assert_eq!(field(s, "conn.state"), "SF", "{s}");
    assert_eq!(field(s, "conn.history"), "DdFf", "{s}");
    assert_peers(c, s);
}

#[test]
fn a_seeded_socket_reset_by_its_peer_is_owned_by_the_process_holding_it() {
    if !privileged("a_seeded_socket_reset_by_its_peer_is_owned_by_the_process_holding_it") {
        return;
    }
    let ns = NetNs::new("seedrst");
    let (client, mut server, _port, cport) = connect(&ns, "seedrst", 10, 20);
    let obs = Observer::start(&ns, &[]);
    // The server aborts: the client socket dies in softirq, where no process is current.
    server.ok("linger0");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    let c = by_role(&records, "client");
    assert_eq!(field(c, "source.port"), cport, "{c}");
    assert_eq!(field(c, "conn.close_reason"), "rst_received", "{c}");
    assert_eq!(field(c, "conn.owner_source"), "procfs", "{c}");
    assert_eq!(field(c, "process.pid"), client.pid, "{c}");
    assert_eq!(field(c, "process.name"), client.comm.as_str(), "{c}");
    let s = by_role(&records, "server");
    assert_eq!(field(s, "conn.owner_source"), "close", "{s}");
    assert_eq!(field(s, "process.pid"), server.pid, "{s}");
}

#[test]
fn open_connections_get_update_records_and_a_last_record_at_shutdown() {
    if !privileged("open_connections_get_update_records_and_a_last_record_at_shutdown") {
        return;
    }
    let ns = NetNs::new("upd");
    let obs = Observer::start(&ns, &["--update-interval", "1"]);
    let (mut client, mut server, port, cport) = connect(&ns, "upd", 100, 2000);
    let updates = |obs: &Observer, up: u64| {
        wait_for(
            std::time::Duration::from_secs(10),
            &format!("update records with {up} bytes up"),
            || {
                let found: Vec<Value> = obs
                    .lines()
                    .into_iter()
                    .filter(|l| {
                        field(l, "event.action") == "update" && field(l, "source.bytes") == up
                    })
                    .collect();
                let roles = |role| found.iter().rev().find(|r| field(r, "conn.role") == role);
                Some((roles("client")?.clone(), roles("server")?.clone()))
            },
        )
    };
    let (c, s) = updates(&obs, 100);
    for r in [&c, &s] {
        assert_eq!(
            field(r, "event.type"),
            &serde_json::json!(["connection", "info"]),
            "{r}"
        );
        assert_eq!(field(r, "event.dataset"), "observer.connection", "{r}");
        assert_eq!(field(r, "event.end"), &Value::Null, "{r}");
        assert_eq!(field(r, "conn.state"), "S1", "{r}");
        assert_eq!(field(r, "conn.history"), "ShADd", "{r}");
        assert_eq!(field(r, "conn.pre_existing"), false, "{r}");
        assert_eq!(field(r, "destination.bytes"), 2000, "{r}");
        assert_eq!(field(r, "source.port"), cport, "{r}");
        assert_eq!(field(r, "destination.port"), port, "{r}");
    }
    assert_eq!(field(&c, "process.pid"), client.pid);
    assert_eq!(field(&s, "process.pid"), server.pid);
    assert_peers(&c, &s);
    client.ok("send 11");
    assert_eq!(server.ok("recv 11")["got"], 11);
    let (c2, s2) = updates(&obs, 111);
    assert_eq!(field(&c2, "conn.uid"), field(&c, "conn.uid"));
    assert_eq!(field(&s2, "conn.uid"), field(&s, "conn.uid"));
    let stopped = obs.stop();
    stopped.assert_clean();
    let last: Vec<Value> = stopped
        .dataset("observer.connection")
        .into_iter()
        .filter(|r| field(r, "event.action") == "shutdown")
        .collect();
    assert_eq!(last.len(), 2, "{last:#?}");
    let (c3, s3) = (by_role(&last, "client"), by_role(&last, "server"));
    for r in [c3, s3] {
        assert_eq!(
            field(r, "event.type"),
            &serde_json::json!(["connection", "info"]),
            "{r}"
        );
        assert_eq!(field(r, "conn.state"), "S1", "{r}");
        assert_eq!(field(r, "source.bytes"), 111, "{r}");
        assert_eq!(field(r, "destination.bytes"), 2000, "{r}");
    }
    assert_eq!(field(c3, "conn.uid"), field(&c, "conn.uid"));
    // No closed record: nothing closed.
    assert!(
        stopped
            .dataset("observer.connection")
            .iter()
            .all(|r| field(r, "event.action") != "closed")
    );
}

#[test]
fn the_table_of_open_connections_is_bounded_and_evictions_are_loss() {
    if !privileged("the_table_of_open_connections_is_bounded_and_evictions_are_loss") {
        return;
    }
    let ns = NetNs::new("bound");
    // 700 connections (1400 sockets) to one listener, opened before the observer starts.
    let script = r"
import socket, sys
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1024)
port = l.getsockname()[1]
keep = []
for _ in range(700):
    c = socket.create_connection(('127.0.0.1', port)); s, _ = l.accept(); keep += [c, s]
print(port, flush=True)
sys.stdin.read()
";
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("port");
    assert!(line.trim().parse::<u16>().is_ok(), "{line}");
    let obs = Observer::start(&ns, &["--max-connections", "1024"]);
    let loss = wait_for(std::time::Duration::from_secs(10), "a loss record", || {
        obs.lines()
            .into_iter()
            .find(|l| field(l, "event.dataset") == "observer.loss")
    });
    // 1400 open sockets, 1024 kept.
    assert_eq!(field(&loss, "loss.table_full"), 376, "{loss}");
    // Closing every socket: all 1400 close records, whatever the table kept.
    let _ = holder.stdin.take().map(|mut s| s.write_all(b""));
    holder.wait().expect("python exits");
    let records = obs.wait_records("observer.connection", 1400);
    let stopped = obs.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(records.len(), 1400);
    assert!(
        records
            .iter()
            .all(|r| field(r, "conn.pre_existing") == true)
    );
    let summary = stopped
        .dataset("observer.loss")
        .into_iter()
        .find(|l| field(l, "event.action") == "summary")
        .expect("summary");
    assert_eq!(field(&summary, "loss.total.table_full"), 376, "{summary}");
    assert_eq!(field(&summary, "loss.total.map_full"), 0, "{summary}");
    assert_eq!(field(&summary, "loss.total.ring_full"), 0, "{summary}");
}
