//! Retransmits, timeouts and handshake times against ground truth: packets are lost for real
//! (nft drop rules on input), and nft counters on output count what each socket really sent.

use std::{thread, time::Duration};

use observer_tests::{
    NetNs, Observer, Peer, field, now_us, parse_ts, privileged, states, wait_for,
};
use serde_json::Value;

/// An nft table in the namespace with counters on output and drop rules on input.
struct Wire<'a> {
    ns: &'a NetNs,
}

impl<'a> Wire<'a> {
    fn new(ns: &'a NetNs) -> Self {
        ns.nft(
            "add table inet obs; \
                add chain inet obs out { type filter hook output priority 0; }; \
                add chain inet obs in { type filter hook input priority 0; }",
        );
        Self { ns }
    }

    /// Adds a counting rule on output, named by its comment.
    fn count(&self, name: &str, matcher: &str) {
        self.ns.nft(&format!(
            "add rule inet obs out {matcher} counter comment \"{name}\""
        ));
    }

    /// Adds a dropping rule on input, named by its comment.
    fn drop_in(&self, name: &str, matcher: &str) {
        self.ns.nft(&format!(
            "add rule inet obs in {matcher} counter drop comment \"{name}\""
        ));
    }

    /// Adds a rule on input that drops the first `matcher` packet only, however slowly the test
    /// runs (under QEMU's emulation the sender retransmits before a test could delete a rule):
    /// an nft quota of `bytes` is used up by that packet, and later ones pass.
    fn drop_first_in(&self, name: &str, matcher: &str, bytes: u32) {
        self.ns.nft(&format!(
            "add rule inet obs in {matcher} quota until {bytes} bytes counter drop comment \"{name}\""
        ));
    }

    /// Deletes the input rule named `name`.
    fn delete(&self, name: &str) {
        let handle = self.rule(name).1;
        self.ns
            .nft(&format!("delete rule inet obs in handle {handle}"));
    }

    /// Packets matched by the rule named `name`.
    fn packets(&self, name: &str) -> u64 {
        self.rule(name).0
    }

    fn rule(&self, name: &str) -> (u64, u64) {
        let out = observer_tests::sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns.name,
                "nft",
                "-j",
                "list",
                "table",
                "inet",
                "obs",
            ],
        );
        let json: Value = serde_json::from_str(&out).expect("nft json");
        for item in json["nftables"].as_array().expect("nftables") {
            let rule = &item["rule"];
            if rule["comment"] != name {
                continue;
            }
            let packets = rule["expr"]
                .as_array()
                .expect("expr")
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .expect("counter");
            return (packets, rule["handle"].as_u64().expect("handle"));
        }
        panic!("no nft rule {name}: {out}");
    }
}

fn wait_packets(wire: &Wire, name: &str, n: u64) {
    wait_for(
        Duration::from_secs(10),
        &format!("{n} packets on {name}"),
        || (wire.packets(name) >= n).then_some(()),
    );
}

fn one(records: &[Value], role: &str) -> Value {
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| field(r, "conn.role") == role)
        .collect();
    assert_eq!(mine.len(), 1, "one {role} record: {records:#?}");
    mine[0].clone()
}

#[test]
fn an_unanswered_syn_times_out_as_s0() {
    if !privileged("an_unanswered_syn_times_out_as_s0") {
        return;
    }
    let ns = NetNs::new("s0");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    let wire = Wire::new(&ns);
    let obs = Observer::start(&ns, &[]);
    let mut server = Peer::spawn(&ns, "obs-server");
    let port = server.port("listen 4 127.0.0.1", "port");
    wire.count("syn-out", &format!("tcp dport {port} tcp flags == syn"));
    wire.drop_in("syn-in", &format!("tcp dport {port} tcp flags == syn"));
    let mut client = Peer::spawn(&ns, "obs-client");
    let start = now_us();
    assert_eq!(
        client.cmd(&format!("connect 4 127.0.0.1 {port}"))["error"],
        "ETIMEDOUT"
    );
    let end = now_us();
    let records = obs.wait_records("observer.connection", 1);
    obs.stop().assert_clean();
    assert_eq!(
        records.len(),
        1,
        "no server socket was ever created: {records:#?}"
    );
    let c = &records[0];
    // How many SYNs go out before the kernel gives up depends on the kernel (6.6+ retransmits
    // the first SYNs at linear 1 s intervals): the wire says.
    let syns = wire.packets("syn-out");
    assert!(syns >= 2, "{syns} SYNs");
    assert_eq!(states(c), ["SYN_SENT", "CLOSE"]);
    assert_eq!(field(c, "conn.state"), "S0");
    assert_eq!(field(c, "conn.history"), "S");
    assert_eq!(field(c, "conn.close_reason"), "timeout");
    assert_eq!(field(c, "conn.close_initiator"), "none");
    assert_eq!(field(c, "conn.error"), "ETIMEDOUT");
    assert_eq!(field(c, "tcp.retransmits_syn"), syns - 1);
    assert_eq!(field(c, "tcp.retransmits"), syns - 1);
    assert_eq!(field(c, "process.pid"), client.pid);
    assert!(
        field(c, "tcp.handshake_rtt_us").is_null(),
        "never established: {c}"
    );
    // Each retransmission timeout of a SYN is at least 1 s, and the kernel waits one more
    // before giving up.
    let took = parse_ts(field(c, "event.end").as_str().expect("end"))
        - parse_ts(field(c, "event.start").as_str().expect("start"));
    let floor = i64::try_from(syns).expect("small") * 1_000_000;
    assert!(
        (floor..=end - start).contains(&took),
        "SYN_SENT lasted {took} µs"
    );
}

#[test]
fn syn_and_synack_retransmits_match_the_wire() {
    if !privileged("syn_and_synack_retransmits_match_the_wire") {
        return;
    }
    let ns = NetNs::new("synack");
    let wire = Wire::new(&ns);
    let obs = Observer::start(&ns, &[]);
    let mut server = Peer::spawn(&ns, "obs-server");
    let port = server.port("listen 4 127.0.0.1", "port");
    wire.count("syn-out", &format!("tcp dport {port} tcp flags == syn"));
    wire.count(
        "synack-out",
        &format!("tcp sport {port} tcp flags == syn|ack"),
    );
    // Lose the first SYN-ACK; then also the client's SYN retransmits, so that the server's
    // own timer must retransmit its SYN-ACK; then let everything through.
    wire.drop_in(
        "synack-in",
        &format!("tcp sport {port} tcp flags == syn|ack"),
    );
    let mut client = Peer::spawn(&ns, "obs-client");
    let start = now_us();
    let connecting = thread::spawn(move || {
        let reply = client.ok(&format!("connect 4 127.0.0.1 {port}"));
        (client, reply)
    });
    wait_packets(&wire, "synack-in", 1);
    wire.drop_in("syn-in", &format!("tcp dport {port} tcp flags == syn"));
    wait_packets(&wire, "synack-in", 2);
    wire.delete("synack-in");
    wire.delete("syn-in");
    let (mut client, reply) = connecting.join().expect("connect thread");
    let cport = u16::try_from(reply["local_port"].as_u64().expect("port")).expect("u16");
    server.ok("accept");
    client.ok("send 5");
    server.ok("recv 5");
    client.ok("close");
    server.ok("wait_eof");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let end = now_us();
    obs.stop().assert_clean();
    let (c, s) = (one(&records, "client"), one(&records, "server"));
    let (syns, synacks) = (wire.packets("syn-out"), wire.packets("synack-out"));
    assert!(
        syns >= 2 && synacks >= 3,
        "the scenario happened: {syns} SYNs, {synacks} SYN-ACKs"
    );
    assert_eq!(field(&c, "tcp.retransmits_syn"), syns - 1, "{c}");
    assert_eq!(field(&s, "tcp.retransmits_synack"), synacks - 1, "{s}");
    assert_eq!(field(&s, "tcp.retransmits"), synacks - 1, "{s}");
    assert_eq!(field(&c, "source.port"), cport);
    assert_eq!(field(&s, "source.port"), cport);
    // The handshake waited out every SYN-ACK retransmission timeout, each at least 1 s.
    let rtt = field(&c, "tcp.handshake_rtt_us")
        .as_u64()
        .expect("client handshake");
    let floor = (synacks - 1) * 1_000_000;
    let window = floor..=u64::try_from(end - start).expect("positive");
    assert!(
        window.contains(&rtt),
        "client handshake {rtt} µs outside {window:?}"
    );
    assert_eq!(field(&s, "conn.state"), "SF", "{s}");
}

#[test]
fn a_lost_data_segment_is_retransmitted_once_and_counted_once() {
    if !privileged("a_lost_data_segment_is_retransmitted_once_and_counted_once") {
        return;
    }
    let ns = NetNs::new("rtx");
    let wire = Wire::new(&ns);
    let obs = Observer::start(&ns, &[]);
    let mut server = Peer::spawn(&ns, "obs-server");
    let mut client = Peer::spawn(&ns, "obs-client");
    let port = server.port("listen 4 127.0.0.1", "port");
    let cport = client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
    server.ok("accept");
    // Segments to the server carrying payload (pure ACKs are 52 bytes with timestamps).
    let data = format!("tcp dport {port} ip length > 60");
    wire.count("data-out", &data);
    // 1052 bytes of IP packet: the quota drops the segment and lets its retransmit through.
    wire.drop_first_in("data-in", &data, 1100);
    client.ok("send 1000");
    wait_packets(&wire, "data-in", 1);
    wire.delete("data-in");
    assert_eq!(server.ok("recv 1000")["got"], 1000);
    server.ok("send 10");
    client.ok("recv 10");
    client.ok("close");
    server.ok("wait_eof");
    // The client socket is handed to time-wait before the server's FIN: history without 'f'.
    ns.wait_tcp_state(cport, "fin-wait-2");
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    let (c, s) = (one(&records, "client"), one(&records, "server"));
    let sent = wire.packets("data-out");
    assert_eq!(sent, 2, "the segment and its retransmit");
    assert_eq!(field(&c, "tcp.retransmits_data"), sent - 1);
    assert_eq!(field(&c, "tcp.retransmits"), sent - 1);
    assert_eq!(field(&s, "tcp.retransmits"), 0);
    // Retransmitted bytes are counted once.
    for r in [&c, &s] {
        assert_eq!(field(r, "source.bytes"), 1000, "{r}");
        assert_eq!(field(r, "destination.bytes"), 10, "{r}");
    }
    assert_eq!(field(&c, "conn.history"), "ShADdTF");
    assert_eq!(field(&s, "conn.history"), "ShADdFf");
}
