//! `observer snapshot` against `ss -tanpH` taken at the same moment: the same sockets, states
//! and owners; and what ss cannot tell: age, time in state, payload bytes.

use std::{collections::BTreeSet, process::Command};

use observer_tests::{
    NetNs, Observer, Peer, field,
    observer::{bin, parse_lines, scratch},
    privileged, sh,
};
use serde_json::Value;

/// (state as ss names it, local, remote, owner pid)
type Socket = (String, String, String, u32);

fn ss_name(state: &str) -> &str {
    match state {
        "ESTABLISHED" => "ESTAB",
        "CLOSE_WAIT" => "CLOSE-WAIT",
        "FIN_WAIT2" => "FIN-WAIT-2",
        "LISTEN" => "LISTEN",
        other => other,
    }
}

fn from_ss(text: &str) -> BTreeSet<Socket> {
    text.lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let pid = l
                .split("pid=")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no owner in ss line {l}"));
            let remote = cols[4].replace('*', "0");
            (cols[0].to_owned(), cols[3].to_owned(), remote, pid)
        })
        .collect()
}

fn from_snapshot(rows: &[Value]) -> BTreeSet<Socket> {
    rows.iter()
        .map(|r| {
            let addr = |side: &str| {
                format!(
                    "{}:{}",
                    field(r, &format!("{side}.ip")).as_str().expect("ip"),
                    field(r, &format!("{side}.port"))
                )
            };
            (
                ss_name(field(r, "conn.state").as_str().expect("state")).to_owned(),
                addr("local"),
                addr("remote"),
                u32::try_from(
                    field(r, "process.pid")
                        .as_u64()
                        .unwrap_or_else(|| panic!("no owner: {r}")),
                )
                .expect("pid"),
            )
        })
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, compared with ss field by field"
)]
fn snapshot_matches_ss_and_adds_age_and_bytes() {
    if !privileged("snapshot_matches_ss_and_adds_age_and_bytes") {
        return;
    }
    let ns = NetNs::new("snap");
    let control = scratch("sock");
    let control = control.to_str().expect("utf-8");
    let obs = Observer::start(&ns, &["--control-socket", control]);
    // An established connection with traffic, and one half-closed by its client.
    let (mut s1, mut c1) = (Peer::spawn(&ns, "snap-srv1"), Peer::spawn(&ns, "snap-cli1"));
    let (mut s2, mut c2) = (Peer::spawn(&ns, "snap-srv2"), Peer::spawn(&ns, "snap-cli2"));
    let p1 = s1.port("listen 4 127.0.0.1", "port");
    let cp1 = c1.port(&format!("connect 4 127.0.0.1 {p1}"), "local_port");
    s1.ok("accept");
    c1.ok("send 100");
    assert_eq!(s1.ok("recv 100")["got"], 100);
    s1.ok("send 2000");
    assert_eq!(c1.ok("recv 2000")["got"], 2000);
    let p2 = s2.port("listen 4 127.0.0.1", "port");
    let cp2 = c2.port(&format!("connect 4 127.0.0.1 {p2}"), "local_port");
    s2.ok("accept");
    let before_shutdown = std::time::Instant::now();
    c2.ok("shutdown_wr");
    assert_eq!(s2.ok("wait_eof")["extra"], 0);
    ns.wait_tcp_state(cp2, "fin-wait-2");
    let since_shutdown = before_shutdown.elapsed();

    let netns = ns.path();
    let netns = netns.to_str().expect("utf-8");
    let out = Command::new(bin())
        .args([
            "snapshot",
            "--json",
            "--control-socket",
            control,
            "--netns",
            netns,
        ])
        .output()
        .expect("snapshot");
    let ss = sh("ip", &["netns", "exec", &ns.name, "ss", "-tanpH"]);
    let table = Command::new(bin())
        .args(["snapshot", "--control-socket", control, "--netns", netns])
        .output()
        .expect("snapshot table");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        rows.len(),
        6,
        "two listeners, four connected sockets: {rows:#?}"
    );
    assert_eq!(from_snapshot(&rows), from_ss(&ss), "snapshot vs ss:\n{ss}");

    let row = |lport: u16, rport: u16| {
        rows.iter()
            .find(|r| field(r, "local.port") == lport && field(r, "remote.port") == rport)
            .unwrap_or_else(|| panic!("no row {lport}->{rport} in {rows:#?}"))
    };
    let elapsed_ms = obs.started.elapsed().as_secs_f64() * 1000.0;
    for (r, owner, sent, received, state) in [
        (row(cp1, p1), &c1, 100, 2000, "ESTABLISHED"),
        (row(p1, cp1), &s1, 2000, 100, "ESTABLISHED"),
        (row(cp2, p2), &c2, 0, 0, "FIN_WAIT2"),
        (row(p2, cp2), &s2, 0, 0, "CLOSE_WAIT"),
    ] {
        assert_eq!(field(r, "event.dataset"), "observer.snapshot", "{r}");
        assert_eq!(field(r, "conn.state"), state, "{r}");
        assert_eq!(field(r, "process.pid"), owner.pid, "{r}");
        assert_eq!(field(r, "process.name"), owner.comm.as_str(), "{r}");
        assert_eq!(field(r, "tcp.bytes_sent"), sent, "{r}");
        assert_eq!(field(r, "tcp.bytes_received"), received, "{r}");
        assert_eq!(field(r, "tcp.retransmits"), 0, "{r}");
        let age = field(r, "conn.age_ms")
            .as_f64()
            .unwrap_or_else(|| panic!("no age: {r}"));
        assert!(
            age > 0.0 && age < elapsed_ms,
            "age {age} ms, observer up {elapsed_ms} ms: {r}"
        );
        let in_state = field(r, "conn.in_state_ms")
            .as_f64()
            .unwrap_or_else(|| panic!("{r}"));
        assert!(in_state <= age, "{r}");
        assert!(
            field(r, "tcp.srtt_us").as_u64().is_some_and(|us| us > 0),
            "{r}"
        );
    }
    // Both ends of the half-closed connection entered their state after the shutdown.
    for r in [row(cp2, p2), row(p2, cp2)] {
        let in_state = field(r, "conn.in_state_ms").as_f64().expect("in state");
        assert!(
            in_state < since_shutdown.as_secs_f64() * 1000.0 + 5_000.0,
            "{r}"
        );
    }
    // The table shows the same sockets, one line each, owner first.
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.lines().count(), 7, "{table}");
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("127.0.0.1:{cp1}")))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[0], format!("{}/{}", c1.pid, c1.comm));
    assert_eq!(
        (cols[3], cols[6], cols[7], cols[9]),
        ("ESTABLISHED", "100", "2000", "0"),
        "{line}"
    );
    obs.stop().assert_clean();
}

#[test]
fn without_an_agent_snapshot_lists_the_kernels_sockets() {
    if !privileged("without_an_agent_snapshot_lists_the_kernels_sockets") {
        return;
    }
    let ns = NetNs::new("snapalone");
    let (mut s, mut c) = (Peer::spawn(&ns, "alone-srv"), Peer::spawn(&ns, "alone-cli"));
    let p = s.port("listen 4 127.0.0.1", "port");
    let cp = c.port(&format!("connect 4 127.0.0.1 {p}"), "local_port");
    s.ok("accept");
    c.ok("send 7");
    assert_eq!(s.ok("recv 7")["got"], 7);
    let netns = ns.path();
    let out = Command::new(bin())
        .args([
            "snapshot",
            "--json",
            "--control-socket",
            "/nonexistent/observer.sock",
            "--netns",
        ])
        .arg(&netns)
        .output()
        .expect("snapshot");
    let ss = sh("ip", &["netns", "exec", &ns.name, "ss", "-tanpH"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no agent at /nonexistent/observer.sock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        from_snapshot(&rows),
        from_ss(&ss),
        "{ss}\nobserver snapshot said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rows
        .iter()
        .find(|r| field(r, "local.port") == cp)
        .expect("client row");
    assert_eq!(
        field(r, "conn.age_ms"),
        &Value::Null,
        "unknown without an agent: {r}"
    );
    assert_eq!(field(r, "conn.owner_source"), "procfs", "{r}");
    assert_eq!(field(r, "tcp.bytes_sent"), 7, "{r}");
}

#[test]
fn a_silent_snapshot_client_holds_only_itself() {
    if !privileged("a_silent_snapshot_client_holds_only_itself") {
        return;
    }
    let ns = NetNs::new("snapquiet");
    let control = scratch("sock");
    let obs = Observer::start(&ns, &["--control-socket", control.to_str().expect("utf-8")]);
    let mut server = Peer::spawn(&ns, "quiet-srv");
    let port = server.port("listen 4 127.0.0.1", "port");
    // A client that connects and says nothing. Served on the capture loop, it held every other
    // client (and the ring) until its 10 s timeout closed it.
    let mut silent = std::os::unix::net::UnixStream::connect(&control).expect("connect");
    let netns = ns.path();
    let out = Command::new(bin())
        .args(["snapshot", "--json", "--control-socket"])
        .arg(&control)
        .arg("--netns")
        .arg(&netns)
        .output()
        .expect("snapshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = parse_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows.len(), 1, "the listener: {rows:#?}");
    assert_eq!(field(&rows[0], "local.port"), port, "{rows:#?}");
    // The silent client is still waited for: the agent has not given up on it yet.
    silent.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let still_open = std::io::Read::read(&mut silent, &mut byte);
    assert_eq!(
        still_open.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the silent client was not closed before the other was answered"
    );
    // And when it asks at last, it is answered too.
    silent.set_nonblocking(false).expect("blocking");
    std::io::Write::write_all(&mut silent, b"snapshot\n").expect("request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut silent, &mut answer).expect("answer");
    let late = parse_lines(&answer);
    assert_eq!(late.len(), 1, "the listener: {late:#?}");
    assert_eq!(field(&late[0], "local.port"), port, "{late:#?}");
    drop(obs);
}
