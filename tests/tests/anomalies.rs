//! Anomaly detection against the real kernel (docs/anomalies.md): each rule provoked for real in
//! the test's own namespace, firing with the right subject and evidence and resolving after; a
//! benign run raises nothing; a recording replays to the same alerts.

use std::time::Duration;

use observer_tests::{
    NetNs, Observer, Peer,
    anomaly::{ANOMALY, Recording, StuckSocket, check_common, finish_stuck, wait_alerts},
    field, now_us, parse_ts, privileged, sh,
};
use serde_json::{Value, json};

#[test]
fn close_wait_stuck_names_the_process_and_resolves_when_it_closes() {
    if !privileged("close_wait_stuck_names_the_process_and_resolves_when_it_closes") {
        return;
    }
    let ns = NetNs::new("cw");
    let (obs, recording) = Recording::start(&ns, &["--anomalies", "--close-wait-after", "2"]);
    let mut server = Peer::spawn(&ns, "obs-cw-server");
    let mut client = Peer::spawn(&ns, "obs-cw-client");
    let port = server.port("listen 4 127.0.0.1", "port");
    let cport = client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
    server.ok("accept");
    // The client closes; the server never does: its socket sits in CLOSE_WAIT.
    client.ok("close");
    let closed_at = now_us();
    ns.wait_tcp_state(port, "close-wait");

    let stuck = StuckSocket {
        rule: "close_wait_stuck",
        pid: server.pid,
        name: "obs-cw-server",
        peer: format!("127.0.0.1:{cport}"),
        listen_ports: json!([port]),
    };
    stuck.check_fired(&wait_alerts(&obs, 1, Duration::from_secs(10))[0], closed_at);

    // The process closes it: resolved, once.
    server.ok("close");
    let resolved_from = now_us();
    let both = wait_alerts(&obs, 2, Duration::from_secs(10));
    stuck.check_resolved(&both[1], resolved_from);
    // The sample is the server's socket: its record names the same uid.
    finish_stuck(obs, &recording, &both, "server");
}

#[test]
fn connect_failures_to_a_closed_port_fire_and_resolve() {
    if !privileged("connect_failures_to_a_closed_port_fire_and_resolve") {
        return;
    }
    let ns = NetNs::new("cf");
    let (obs, recording) = Recording::start(
        &ns,
        &[
            "--anomalies",
            "--connect-failures",
            "3",
            "--connect-failures-window",
            "2",
        ],
    );
    let mut client = Peer::spawn(&ns, "obs-cf-client");
    let port = client.port("freeport 4 127.0.0.1", "port");
    for _ in 0..3 {
        let reply = client.cmd(&format!("connect 4 127.0.0.1 {port}"));
        assert_eq!(reply["error"], "ECONNREFUSED");
    }
    let alerts = wait_alerts(&obs, 2, Duration::from_secs(15));
    let stopped = obs.stop();
    stopped.assert_clean();
    let records = stopped.dataset("observer.connection");
    assert_eq!(records.len(), 3, "{records:#?}");
    let a = &alerts[0];
    check_common(a, "connect_failures", "firing");
    assert_eq!(field(a, "destination.ip"), "127.0.0.1", "{a}");
    assert_eq!(field(a, "destination.port"), port, "{a}");
    assert_eq!(field(a, "process.pid"), client.pid, "{a}");
    assert_eq!(field(a, "process.name"), "obs-cf-client", "{a}");
    assert_eq!(field(a, "anomaly.observed"), 3, "{a}");
    assert_eq!(field(a, "anomaly.threshold"), 3, "{a}");
    assert_eq!(field(a, "anomaly.window_s"), 2, "{a}");
    assert_eq!(field(a, "anomaly.refused"), 3, "{a}");
    assert_eq!(field(a, "anomaly.timeouts"), 0, "{a}");
    let mut uids: Vec<&Value> = records.iter().map(|c| field(c, "conn.uid")).collect();
    uids.reverse();
    assert_eq!(field(a, "conn.uids"), &json!(uids), "newest first: {a}");
    // Fired by the third failure, stamped with its end.
    assert_eq!(
        field(a, "@timestamp"),
        field(&records[2], "event.end"),
        "{a}"
    );

    let r = &alerts[1];
    check_common(r, "connect_failures", "resolved");
    assert_eq!(field(r, "destination.port"), port, "{r}");
    assert_eq!(field(r, "anomaly.observed"), 0, "{r}");
    assert_eq!(field(r, "anomaly.total"), 3, "{r}");
    let last_end = parse_ts(field(&records[2], "event.end").as_str().expect("end"));
    let resolved = parse_ts(field(r, "@timestamp").as_str().expect("ts"));
    assert_eq!(
        resolved - last_end,
        2_000_000,
        "a whole window after the last: {r}"
    );
    assert_eq!(stopped.dataset(ANOMALY).len(), 2);
    recording.assert_replays(&alerts);
}

#[test]
fn connect_failures_with_syns_dropped_time_out() {
    if !privileged("connect_failures_with_syns_dropped_time_out") {
        return;
    }
    let ns = NetNs::new("cft");
    // One SYN retransmit: a connect times out after 1 + 2 s.
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    let obs = Observer::start(&ns, &["--anomalies", "--connect-failures", "2"]);
    let mut server = Peer::spawn(&ns, "obs-cft-server");
    let mut client = Peer::spawn(&ns, "obs-cft-client");
    let port = server.port("listen 4 127.0.0.1", "port");
    ns.nft(&format!(
        "add table inet obs; \
         add chain inet obs in {{ type filter hook input priority 0; }}; \
         add rule inet obs in tcp dport {port} drop"
    ));
    for _ in 0..2 {
        let reply = client.cmd(&format!("connect 4 127.0.0.1 {port}"));
        assert_eq!(reply["error"], "ETIMEDOUT");
    }
    let alerts = wait_alerts(&obs, 1, Duration::from_secs(10));
    let stopped = obs.stop();
    stopped.assert_clean();
    let a = &alerts[0];
    check_common(a, "connect_failures", "firing");
    assert_eq!(field(a, "destination.port"), port, "{a}");
    assert_eq!(field(a, "process.pid"), client.pid, "{a}");
    assert_eq!(field(a, "process.name"), "obs-cft-client", "{a}");
    assert_eq!(field(a, "anomaly.observed"), 2, "{a}");
    assert_eq!(field(a, "anomaly.timeouts"), 2, "{a}");
    assert_eq!(field(a, "anomaly.refused"), 0, "{a}");
    assert_eq!(field(a, "anomaly.window_s"), 10, "default window: {a}");
    let records = stopped.dataset("observer.connection");
    assert!(
        records
            .iter()
            .filter(|c| field(c, "conn.role") == "client")
            .all(|c| field(c, "conn.state") == "S0" && field(c, "conn.close_reason") == "timeout"),
        "{records:#?}"
    );
}

#[test]
fn benign_traffic_raises_nothing() {
    if !privileged("benign_traffic_raises_nothing") {
        return;
    }
    let ns = NetNs::new("ab");
    let obs = Observer::start(
        &ns,
        &[
            "--anomalies",
            "--close-wait-after",
            "1",
            "--connect-failures",
            "2",
        ],
    );
    let mut server = Peer::spawn(&ns, "obs-ab-server");
    let mut client = Peer::spawn(&ns, "obs-ab-client");
    let port = server.port("listen 4 127.0.0.1", "port");
    for _ in 0..20 {
        client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
        server.ok("accept");
        client.ok("send 100");
        server.ok("recv 100");
        // The server closes promptly after the client's FIN: a CLOSE_WAIT of microseconds.
        client.ok("close");
        server.ok("wait_eof");
        server.ok("close");
    }
    // Long enough for several table reads past the threshold.
    std::thread::sleep(Duration::from_millis(2500));
    let stopped = obs.stop();
    stopped.assert_clean();
    assert_eq!(stopped.dataset("observer.connection").len(), 40);
    assert_eq!(stopped.dataset(ANOMALY), Vec::<Value>::new());
}

#[test]
fn rst_storm_per_remote_host_and_per_listener() {
    if !privileged("rst_storm_per_remote_host_and_per_listener") {
        return;
    }
    let ns = NetNs::new("rs");
    let (obs, recording) = Recording::start(
        &ns,
        &[
            "--anomalies",
            "--connect-failures",
            "0",
            "--rst-storm",
            "3",
            "--rst-storm-window",
            "2",
        ],
    );
    let mut client = Peer::spawn(&ns, "obs-rs-client");
    let mut server = Peer::spawn(&ns, "obs-rs-server");
    // Three connects to a closed port: three RSTs from the host (here, loopback).
    let closed = client.port("freeport 4 127.0.0.1", "port");
    for _ in 0..3 {
        let reply = client.cmd(&format!("connect 4 127.0.0.1 {closed}"));
        assert_eq!(reply["error"], "ECONNREFUSED");
    }
    let remote = wait_alerts(&obs, 1, Duration::from_secs(10));
    let a = &remote[0];
    check_common(a, "rst_storm", "firing");
    assert_eq!(field(a, "anomaly.scope"), "remote", "{a}");
    assert_eq!(field(a, "destination.ip"), "127.0.0.1", "{a}");
    assert_eq!(
        field(a, "destination.port"),
        &Value::Null,
        "a host, not a port: {a}"
    );
    assert_eq!(field(a, "process.pid"), client.pid, "{a}");
    assert_eq!(field(a, "anomaly.observed"), 3, "{a}");
    assert_eq!(field(a, "anomaly.resets_received"), 3, "{a}");
    assert_eq!(field(a, "anomaly.resets_sent"), 0, "{a}");

    let resolved = wait_alerts(&obs, 2, Duration::from_secs(10));
    check_common(&resolved[1], "rst_storm", "resolved");
    assert_eq!(field(&resolved[1], "anomaly.scope"), "remote");

    // Three clients abort with SO_LINGER 0: the listener's server sockets receive the RSTs,
    // and the host sees the clients send them.
    let port = server.port("listen 4 127.0.0.1", "port");
    for _ in 0..3 {
        client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
        server.ok("accept");
        client.ok("linger0");
        client.ok("close");
        server.ok("close");
    }
    let all = wait_alerts(&obs, 6, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = obs.stop();
    stopped.assert_clean();
    assert_eq!(
        stopped.dataset(ANOMALY),
        all,
        "each subject fired and resolved once"
    );
    let scoped = |scope: &str| -> Vec<&Value> {
        all[2..]
            .iter()
            .filter(|l| field(l, "anomaly.scope") == scope)
            .collect()
    };
    let listener = scoped("listener");
    assert_eq!(listener.len(), 2, "fired and resolved: {all:#?}");
    let l = listener[0];
    check_common(l, "rst_storm", "firing");
    assert_eq!(field(l, "destination.port"), port, "{l}");
    assert_eq!(field(l, "destination.ip"), "127.0.0.1", "{l}");
    assert_eq!(field(l, "anomaly.observed"), 3, "{l}");
    assert_eq!(field(l, "anomaly.resets_received"), 3, "{l}");
    assert_eq!(field(l, "anomaly.resets_sent"), 0, "{l}");
    assert_eq!(field(l, "process.pid"), server.pid, "{l}");
    assert_eq!(field(l, "process.name"), "obs-rs-server", "{l}");
    check_common(listener[1], "rst_storm", "resolved");
    let host = scoped("remote");
    assert_eq!(host.len(), 2, "fired and resolved: {all:#?}");
    let h = host[0];
    check_common(h, "rst_storm", "firing");
    assert_eq!(field(h, "anomaly.observed"), 3, "{h}");
    assert_eq!(field(h, "anomaly.resets_sent"), 3, "{h}");
    assert_eq!(field(h, "anomaly.resets_received"), 0, "{h}");
    assert_eq!(field(h, "process.pid"), client.pid, "{h}");
    check_common(host[1], "rst_storm", "resolved");
    recording.assert_replays(&all);
}

#[test]
fn event_loss_fires_when_a_tiny_ring_overflows_and_resolves_after() {
    if !privileged("event_loss_fires_when_a_tiny_ring_overflows_and_resolves_after") {
        return;
    }
    let ns = NetNs::new("el");
    let obs = Observer::start(
        &ns,
        &["--anomalies", "--event-loss-window", "2", "--ring-mib", "1"],
    );
    // The observer stopped, thousands of connections fill its 1 MiB ring; it drops the rest.
    // SAFETY: signalling our own child.
    let pid = libc::pid_t::try_from(obs.pid()).expect("pid");
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-c",
            "import socket\n\
             l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(512)\n\
             for _ in range(6000):\n\
             \x20   c = socket.create_connection(l.getsockname()); s, _ = l.accept()\n\
             \x20   c.close(); s.close()\n",
        ],
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let alerts = wait_alerts(&obs, 2, Duration::from_secs(15));
    let stopped = obs.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let losses: Vec<Value> = stopped
        .dataset("observer.loss")
        .into_iter()
        .filter(|l| field(l, "event.action") == "loss")
        .collect();
    assert!(
        !losses.is_empty(),
        "the ring overflowed: {}",
        stopped.stderr
    );
    let first_lost = field(&losses[0], "loss.ring_full")
        .as_u64()
        .expect("ring_full");
    assert!(first_lost > 0, "{}", losses[0]);

    let a = &alerts[0];
    check_common(a, "event_loss", "firing");
    assert_eq!(field(a, "anomaly.observed"), first_lost, "{a}");
    assert_eq!(field(a, "anomaly.ring_full"), first_lost, "{a}");
    assert_eq!(field(a, "anomaly.threshold"), 1, "default threshold: {a}");
    assert_eq!(field(a, "anomaly.window_s"), 2, "{a}");
    assert_eq!(
        field(a, "@timestamp"),
        field(&losses[0], "@timestamp"),
        "{a}"
    );
    assert!(
        field(a, "event.reason")
            .as_str()
            .is_some_and(|r| r.contains("--ring-mib")),
        "{a}"
    );
    let r = &alerts[1];
    check_common(r, "event_loss", "resolved");
    let total: u64 = losses
        .iter()
        .map(|l| field(l, "loss.ring_full").as_u64().unwrap_or(0))
        .sum();
    assert_eq!(field(r, "anomaly.total"), total, "{r}");
    let last = parse_ts(
        field(&losses[losses.len() - 1], "@timestamp")
            .as_str()
            .expect("ts"),
    );
    let resolved = parse_ts(field(r, "@timestamp").as_str().expect("ts"));
    assert_eq!(
        resolved - last,
        2_000_000,
        "a whole window after the last loss: {r}"
    );
    assert_eq!(stopped.dataset(ANOMALY).len(), 2, "no flapping");
}
