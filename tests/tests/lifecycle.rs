//! Both ends of real TCP connections in a private network namespace, checked transition by
//! transition against the real kernel: normal closes from either side, simultaneous close,
//! refused connects, resets, IPv6.

use observer_tests::{NetNs, Observer, Peer, field, now_us, parse_ts, privileged, states};
use serde_json::Value;

/// What one connection record must say.
struct Expect<'a> {
    role: &'a str,
    states: &'a [&'a str],
    peer: &'a Peer,
    /// (ip, port) of the originator and the responder.
    source: (&'a str, u16),
    destination: (&'a str, u16),
    source_bytes: u64,
    destination_bytes: u64,
    resets_sent: u64,
    resets_received: u64,
    retransmits: u64,
    error: Option<&'a str>,
    /// How the owner was learnt (`conn.owner_source`).
    owner: &'a str,
    /// `conn.state`, `conn.history`, `conn.close_initiator`, `conn.close_reason`.
    zeek: [&'a str; 4],
}

/// A namespace for a test that asserts zero retransmissions: loopback loses nothing, but a
/// tail-loss probe (an early retransmit of the last segment when its ACK is slow) fires under
/// emulation (QEMU TCG) and is a real retransmission. `tcp_early_retrans=0` turns the probe off
/// in this namespace only, so the zero is the kernel's, not luck.
fn lossless_ns(name: &str) -> NetNs {
    let ns = NetNs::new(name);
    ns.sysctl("net.ipv4.tcp_early_retrans", "0");
    ns
}

fn check(record: &Value, want: &Expect, window: (i64, i64)) {
    let ctx = format!("{} record {record}", want.role);
    assert_eq!(field(record, "conn.role"), want.role, "{ctx}");
    assert_eq!(states(record), want.states, "{ctx}");
    assert_eq!(field(record, "process.pid"), want.peer.pid, "{ctx}");
    assert_eq!(
        field(record, "process.name"),
        want.peer.comm.as_str(),
        "{ctx}"
    );
    assert_eq!(field(record, "source.ip"), want.source.0, "{ctx}");
    assert_eq!(field(record, "source.port"), want.source.1, "{ctx}");
    assert_eq!(field(record, "destination.ip"), want.destination.0, "{ctx}");
    assert_eq!(
        field(record, "destination.port"),
        want.destination.1,
        "{ctx}"
    );
    assert_eq!(field(record, "source.bytes"), want.source_bytes, "{ctx}");
    assert_eq!(
        field(record, "destination.bytes"),
        want.destination_bytes,
        "{ctx}"
    );
    assert_eq!(field(record, "conn.resets_sent"), want.resets_sent, "{ctx}");
    assert_eq!(
        field(record, "conn.resets_received"),
        want.resets_received,
        "{ctx}"
    );
    assert_eq!(field(record, "tcp.retransmits"), want.retransmits, "{ctx}");
    assert_eq!(field(record, "conn.error").as_str(), want.error, "{ctx}");
    assert_eq!(field(record, "conn.owner_source"), want.owner, "{ctx}");
    for (key, value) in ["state", "history", "close_initiator", "close_reason"]
        .iter()
        .zip(want.zeek)
    {
        assert_eq!(field(record, &format!("conn.{key}")), value, "{key}: {ctx}");
    }
    assert_eq!(field(record, "network.transport"), "tcp", "{ctx}");
    assert_eq!(
        field(record, "event.dataset"),
        "observer.connection",
        "{ctx}"
    );
    let want_type = if want.source.0.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    };
    assert_eq!(field(record, "network.type"), want_type, "{ctx}");
    assert_eq!(field(record, "conn.pre_existing"), false, "{ctx}");
    // Every transition happened inside the test, in order.
    let mut last = window.0;
    for t in record["conn"]["transitions"]
        .as_array()
        .expect("transitions")
    {
        let ts = parse_ts(t["ts"].as_str().expect("ts"));
        assert!(
            ts >= last && ts <= window.1,
            "transition {t} outside [{last}, {}]: {ctx}",
            window.1
        );
        last = ts;
    }
    assert_eq!(
        parse_ts(field(record, "@timestamp").as_str().expect("@timestamp")),
        last,
        "{ctx}"
    );
}

/// The two records of one connection, client first.
fn pair(records: &[Value]) -> (&Value, &Value) {
    assert_eq!(
        records.len(),
        2,
        "exactly two connection records: {records:#?}"
    );
    let client = records
        .iter()
        .find(|r| field(r, "conn.role") == "client")
        .expect("client record");
    let server = records
        .iter()
        .find(|r| field(r, "conn.role") == "server")
        .expect("server record");
    assert_eq!(
        field(client, "network.community_id"),
        field(server, "network.community_id")
    );
    assert_ne!(field(client, "conn.uid"), field(server, "conn.uid"));
    // Both ends are on this host: each names the other.
    for (me, other) in [(client, server), (server, client)] {
        assert_eq!(field(me, "conn.peer_uid"), field(other, "conn.uid"), "{me}");
        assert_eq!(
            field(me, "peer.process.pid"),
            field(other, "process.pid"),
            "{me}"
        );
        assert_eq!(
            field(me, "peer.process.name"),
            field(other, "process.name"),
            "{me}"
        );
    }
    (client, server)
}

/// Connects a client to a listening server and exchanges `up` then `down` bytes.
fn connect(ns: &NetNs, family: &str, addr: &str, up: u64, down: u64) -> (Peer, Peer, u16, u16) {
    let mut server = Peer::spawn(ns, "obs-server");
    let mut client = Peer::spawn(ns, "obs-client");
    let port = server.port(&format!("listen {family} {addr}"), "port");
    let client_port = client.port(&format!("connect {family} {addr} {port}"), "local_port");
    server.ok("accept");
    client.ok(&format!("send {up}"));
    assert_eq!(server.ok(&format!("recv {up}"))["got"], up);
    server.ok(&format!("send {down}"));
    assert_eq!(client.ok(&format!("recv {down}"))["got"], down);
    (client, server, port, client_port)
}

#[test]
fn a_client_closes_first() {
    if !privileged("a_client_closes_first") {
        return;
    }
    let ns = lossless_ns("a");
    let obs = Observer::start(&ns, &[]);
    let start = now_us();
    let (mut client, mut server, port, cport) = connect(&ns, "4", "127.0.0.1", 100, 2000);
    client.ok("close");
    assert_eq!(server.ok("wait_eof")["extra"], 0);
    // Let the server's (possibly delayed) ACK reach the client first, so that the server's FIN
    // finds the client socket already handed over to time-wait.
    ns.wait_tcp_state(cport, "fin-wait-2");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    let stopped = obs.stop();
    stopped.assert_clean();
    let (c, s) = pair(&records);
    let base = Expect {
        role: "client",
        states: &[
            "SYN_SENT",
            "ESTABLISHED",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
        ],
        peer: &client,
        source: ("127.0.0.1", cport),
        destination: ("127.0.0.1", port),
        source_bytes: 100,
        destination_bytes: 2000,
        resets_sent: 0,
        resets_received: 0,
        retransmits: 0,
        error: None,
        owner: "close",
        // The client socket is handed to time-wait before the server's FIN: from its side,
        // only the originator's FIN was seen.
        zeek: ["S2", "ShADdF", "local", "fin"],
    };
    check(c, &base, (start, end));
    assert_eq!(field(c, "conn.time_wait"), true);
    // The server's FIN came after the client socket had handed over to time-wait.
    assert_eq!(field(c, "conn.fin_received"), false);
    check(
        s,
        &Expect {
            role: "server",
            states: &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            peer: &server,
            zeek: ["SF", "ShADdFf", "remote", "fin"],
            ..base
        },
        (start, end),
    );
    assert_eq!(field(s, "conn.fin_received"), true);
}

#[test]
fn b_server_closes_first() {
    if !privileged("b_server_closes_first") {
        return;
    }
    let ns = lossless_ns("b");
    let obs = Observer::start(&ns, &[]);
    let start = now_us();
    let (mut client, mut server, port, cport) = connect(&ns, "4", "127.0.0.1", 7, 70_000);
    server.ok("close");
    assert_eq!(client.ok("wait_eof")["extra"], 0);
    // The server socket is handed to time-wait before the client's FIN comes.
    ns.wait_tcp_state(port, "fin-wait-2");
    client.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    obs.stop().assert_clean();
    let (c, s) = pair(&records);
    let base = Expect {
        role: "client",
        states: &["SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
        peer: &client,
        source: ("127.0.0.1", cport),
        destination: ("127.0.0.1", port),
        source_bytes: 7,
        destination_bytes: 70_000,
        resets_sent: 0,
        resets_received: 0,
        retransmits: 0,
        error: None,
        owner: "close",
        zeek: ["SF", "ShADdfF", "remote", "fin"],
    };
    check(c, &base, (start, end));
    check(
        s,
        &Expect {
            role: "server",
            states: &[
                "SYN_RECV",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ],
            peer: &server,
            zeek: ["S3", "ShADdf", "local", "fin"],
            ..base
        },
        (start, end),
    );
}

#[test]
fn c_simultaneous_close_reaches_closing() {
    if !privileged("c_simultaneous_close_reaches_closing") {
        return;
    }
    let ns = lossless_ns("c");
    let obs = Observer::start(&ns, &[]);
    let start = now_us();
    let (mut client, mut server, port, cport) = connect(&ns, "4", "127.0.0.1", 10, 20);
    // Lose the client's FIN on the way in, so that both FINs are in flight at once: the server
    // sends its FIN without having seen the client's, and the client receives it in FIN_WAIT1.
    // (Dropping on input, not output: a local output drop is an error to the sender, not a
    // loss it retransmits.)
    ns.nft(&format!(
        "add table inet obs; add chain inet obs in {{ type filter hook input priority 0; }}; \
         add rule inet obs in tcp sport {cport} tcp dport {port} tcp flags & fin == fin drop"
    ));
    // The client's FINs as they leave, in a table of their own that outlives the drop.
    ns.nft(&format!(
        "add table inet wire; add chain inet wire out {{ type filter hook output priority 0; }}; \
         add rule inet wire out tcp sport {cport} tcp dport {port} tcp flags & fin == fin counter"
    ));
    client.ok("close");
    server.ok("close");
    ns.nft("delete table inet obs");
    // The client's FIN goes out again on its retransmission timer: once on bare metal, more
    // often where the test itself runs slowly (QEMU's emulation): the wire says how often.
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    obs.stop().assert_clean();
    let listing = observer_tests::sh(
        "ip",
        &[
            "netns", "exec", &ns.name, "nft", "list", "table", "inet", "wire",
        ],
    );
    let fins: u64 = listing
        .split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no FIN counter: {listing}"));
    assert!(fins >= 2, "the FIN and its retransmit: {listing}");
    let (c, s) = pair(&records);
    let base = Expect {
        role: "client",
        states: &[
            "SYN_SENT",
            "ESTABLISHED",
            "FIN_WAIT1",
            "CLOSING",
            "TIME_WAIT",
        ],
        peer: &client,
        source: ("127.0.0.1", cport),
        destination: ("127.0.0.1", port),
        source_bytes: 10,
        destination_bytes: 20,
        resets_sent: 0,
        resets_received: 0,
        retransmits: fins - 1,
        error: None,
        owner: "close",
        // `T`: the client retransmitted its FIN (letters follow a fixed order, see
        // docs/lifecycle.md).
        zeek: ["SF", "ShADdTFf", "simultaneous", "fin"],
    };
    check(c, &base, (start, end));
    assert_eq!(field(c, "tcp.retransmits_data"), fins - 1);
    assert_eq!(field(c, "conn.fin_received"), true);
    check(
        s,
        &Expect {
            role: "server",
            states: &[
                "SYN_RECV",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ],
            peer: &server,
            // Handed to time-wait before the client's retransmitted FIN came.
            zeek: ["S3", "ShADdf", "local", "fin"],
            retransmits: 0,
            ..base
        },
        (start, end),
    );
}

#[test]
fn d_connect_to_a_closed_port_is_refused() {
    if !privileged("d_connect_to_a_closed_port_is_refused") {
        return;
    }
    let ns = lossless_ns("d");
    let obs = Observer::start(&ns, &[]);
    let start = now_us();
    let mut client = Peer::spawn(&ns, "obs-refused");
    let port = client.port("freeport 4 127.0.0.1", "port");
    let reply = client.cmd(&format!("connect 4 127.0.0.1 {port}"));
    assert_eq!(reply["error"], "ECONNREFUSED");
    let records = obs.wait_records("observer.connection", 1);
    let end = now_us();
    obs.stop().assert_clean();
    assert_eq!(
        records.len(),
        1,
        "only the client socket exists: {records:#?}"
    );
    let c = &records[0];
    assert_eq!(
        field(c, "conn.peer_uid"),
        &Value::Null,
        "no socket ever answered: {c}"
    );
    assert_eq!(field(c, "peer"), &Value::Null, "{c}");
    // The client's port is not known to the test (connect failed); take it from the record.
    let cport = u16::try_from(field(c, "source.port").as_u64().expect("port")).expect("u16");
    assert!(cport > 0);
    check(
        c,
        &Expect {
            role: "client",
            states: &["SYN_SENT", "CLOSE"],
            peer: &client,
            source: ("127.0.0.1", cport),
            destination: ("127.0.0.1", port),
            source_bytes: 0,
            destination_bytes: 0,
            resets_sent: 0,
            resets_received: 1,
            retransmits: 0,
            error: Some("ECONNREFUSED"),
            owner: "connect",
            zeek: ["REJ", "Sr", "remote", "refused"],
        },
        (start, end),
    );
    assert_eq!(field(c, "event.outcome"), "failure");
}

/// The server socket dies by the client's RST before its process touches it again: its owner
/// is its listener's process, or with `--accept-hook` the one that accepted it.
fn linger_zero(args: &[&str], server_owner: &str) {
    let ns = lossless_ns("e");
    let obs = Observer::start(&ns, args);
    let start = now_us();
    let (mut client, mut server, port, cport) = connect(&ns, "4", "127.0.0.1", 300, 40);
    client.ok("linger0");
    client.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    let reply = server.cmd("recv 1");
    assert_eq!(reply["error"], "ECONNRESET", "the server sees the reset");
    obs.stop().assert_clean();
    let (c, s) = pair(&records);
    let base = Expect {
        role: "client",
        states: &["SYN_SENT", "ESTABLISHED", "CLOSE"],
        peer: &client,
        source: ("127.0.0.1", cport),
        destination: ("127.0.0.1", port),
        source_bytes: 300,
        destination_bytes: 40,
        resets_sent: 1,
        resets_received: 0,
        retransmits: 0,
        error: None,
        owner: "close",
        zeek: ["RSTO", "ShADdR", "local", "rst_sent"],
    };
    check(c, &base, (start, end));
    check(
        s,
        &Expect {
            role: "server",
            states: &["SYN_RECV", "ESTABLISHED", "CLOSE"],
            peer: &server,
            resets_sent: 0,
            resets_received: 1,
            error: Some("ECONNRESET"),
            owner: server_owner,
            zeek: ["RSTO", "ShADdR", "remote", "rst_received"],
            ..base
        },
        (start, end),
    );
}

#[test]
fn e_linger_zero_close_resets_mid_connection() {
    if privileged("e_linger_zero_close_resets_mid_connection") {
        linger_zero(&[], "listen");
    }
}

#[test]
fn e_with_the_accept_hook_the_acceptor_owns_the_server_socket() {
    if privileged("e_with_the_accept_hook_the_acceptor_owns_the_server_socket") {
        linger_zero(&["--accept-hook"], "accept");
    }
}

#[test]
fn f_ipv6_client_close() {
    if !privileged("f_ipv6_client_close") {
        return;
    }
    let ns = lossless_ns("f");
    let obs = Observer::start(&ns, &[]);
    let start = now_us();
    let (mut client, mut server, port, cport) = connect(&ns, "6", "::1", 1234, 5678);
    client.ok("close");
    server.ok("wait_eof");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    obs.stop().assert_clean();
    let (c, s) = pair(&records);
    let base = Expect {
        role: "client",
        states: &[
            "SYN_SENT",
            "ESTABLISHED",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
        ],
        peer: &client,
        source: ("::1", cport),
        destination: ("::1", port),
        source_bytes: 1234,
        destination_bytes: 5678,
        resets_sent: 0,
        resets_received: 0,
        retransmits: 0,
        error: None,
        owner: "close",
        zeek: ["SF", "ShADdFf", "local", "fin"],
    };
    check(c, &base, (start, end));
    check(
        s,
        &Expect {
            role: "server",
            states: &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            peer: &server,
            zeek: ["SF", "ShADdFf", "remote", "fin"],
            ..base
        },
        (start, end),
    );
}
