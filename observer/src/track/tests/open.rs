//! Open connections: both ends of local connections, update records, seeding, the bound.

use std::net::SocketAddr;

use observer_common::{
    AF_INET, ConnClosed, ConnState, Endpoints, Owner, conn_flag,
    tcp_state::{
        CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV, SYN_SENT,
    },
};

use super::{MS, closed, conns};
use crate::{
    decode::{Counters, Event},
    facts::{Fact, Holder, Purpose, SeenCounters, SeenSocket, SocketScan, Tracked},
    track::{
        Filter, GRACE_NS, PEER_WAIT_NS, SKEW_NS, Tracker,
        record::{Output, RecordKind},
    },
};

const NETNS: u32 = 4_026_531_840;

fn lo(local_port: u16, remote_port: u16) -> Endpoints {
    let mut t = Endpoints {
        local_port,
        remote_port,
        family: AF_INET,
        ..Endpoints::default()
    };
    t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t
}

fn owned(mut c: ConnClosed, pid: u32, comm: &[u8]) -> ConnClosed {
    let mut name = [0u8; 16];
    name[..comm.len()].copy_from_slice(comm);
    c.state.owner = Owner {
        tgid: pid,
        uid: 0,
        comm: name,
        cgroup_id: 0,
    };
    c
}

fn client(cookie: u64, born: u64) -> ConnClosed {
    let path = [SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE];
    owned(
        closed(
            cookie,
            conn_flag::ROLE_CLIENT,
            CLOSE,
            &path,
            born,
            lo(40000, 80),
        ),
        42,
        b"curl",
    )
}

fn server(cookie: u64, born: u64) -> ConnClosed {
    let path = [SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE];
    owned(
        closed(
            cookie,
            conn_flag::ROLE_SERVER,
            LISTEN,
            &path,
            born,
            lo(80, 40000),
        ),
        43,
        b"nginx",
    )
}

/// The server of [`server`] while still open (in `CLOSE_WAIT`), as a kernel table lists it.
fn server_open(cookie: u64, born: u64) -> ConnState {
    let mut st = server(cookie, born).state;
    st.n_transitions = 3;
    st
}

fn feed(t: &mut Tracker, out: &mut Vec<Output>, e: &Event, now: u64) {
    t.ingest(e, out);
    t.flush_due(now, out);
}

#[test]
fn local_ends_closing_together_name_each_other() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    feed(&mut t, &mut out, &Event::Closed(client(1, 0)), 4 * MS);
    feed(&mut t, &mut out, &Event::Closed(server(2, MS)), 5 * MS);
    t.finish(10 * MS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 2);
    let (cl, sv) = (c[0], c[1]);
    assert_eq!(cl.peer.map(|p| p.uid), Some(sv.uid));
    assert_eq!(sv.peer.map(|p| p.uid), Some(cl.uid));
    assert_eq!(cl.peer.and_then(|p| p.process).map(|p| p.pid), Some(43));
    assert_eq!(sv.peer.and_then(|p| p.process).map(|p| p.pid), Some(42));
}

#[test]
fn an_end_still_open_is_found_in_the_next_kernel_table() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let c = client(1, 0);
    let end = c.header.ts_ns;
    feed(&mut t, &mut out, &Event::Closed(c), end);
    // Due, but its other end may be on this host: it waits for a table.
    t.flush_due(end + GRACE_NS + SKEW_NS + 1, &mut out);
    assert!(conns(&out).is_empty());
    assert!(t.wants_table());
    let table = Tracked {
        ts_ns: end + GRACE_NS + SKEW_NS + 2,
        states: vec![server_open(2, MS)],
    };
    feed(
        &mut t,
        &mut out,
        &Event::Tracked(table),
        end + GRACE_NS + SKEW_NS + 3,
    );
    assert!(!t.wants_table());
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    let server_uid = t.uid(2);
    assert_eq!(c[0].peer.map(|p| p.uid), Some(server_uid));
    assert_eq!(c[0].peer.and_then(|p| p.process).map(|p| p.pid), Some(43));
    let client_uid = c[0].uid;
    // The server closes later: it names the client, long gone.
    let s = server(2, MS);
    let mut later = s;
    later.header.ts_ns = 10_000 * MS;
    feed(&mut t, &mut out, &Event::Closed(later), 10_000 * MS);
    t.finish(10_001 * MS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].peer.map(|p| p.uid), Some(client_uid));
    assert_eq!(c[1].peer.and_then(|p| p.process).map(|p| p.pid), Some(42));
}

#[test]
fn an_open_server_its_process_has_not_touched_is_named_by_its_listener() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let c = client(1, 0);
    let end = c.header.ts_ns;
    feed(&mut t, &mut out, &Event::Closed(c), end);
    // In CLOSE_WAIT and not closed by its process yet: the kernel names no owner.
    let mut server = server_open(2, MS);
    server.flags &= !conn_flag::OWNER_VALID;
    server.owner = Owner::default();
    let mut listener = ConnState::zeroed();
    listener.key = 3;
    listener.netns = NETNS;
    listener.tuple = lo(80, 0);
    listener.first_state = CLOSE;
    listener.flags = conn_flag::TUPLE_VALID | conn_flag::ROLE_LISTENER | conn_flag::OWNER_VALID;
    listener.owner = server_open(2, MS).owner;
    let table = Tracked {
        ts_ns: end + GRACE_NS + SKEW_NS + 2,
        states: vec![listener, server],
    };
    feed(
        &mut t,
        &mut out,
        &Event::Tracked(table),
        end + GRACE_NS + SKEW_NS + 3,
    );
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].peer.map(|p| p.uid), Some(t.uid(2)));
    assert_eq!(c[0].peer.and_then(|p| p.process).map(|p| p.pid), Some(43));
}

#[test]
fn a_waiting_record_goes_out_without_a_peer_when_no_table_comes() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let c = client(1, 0);
    let end = c.header.ts_ns;
    feed(&mut t, &mut out, &Event::Closed(c), end);
    t.flush_due(end + GRACE_NS + PEER_WAIT_NS - 1, &mut out);
    assert!(conns(&out).is_empty());
    t.flush_due(end + GRACE_NS + PEER_WAIT_NS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].peer.is_none());
}

fn seen(
    cookie: u64,
    state: u8,
    local: u16,
    remote: u16,
    counters: Option<SeenCounters>,
) -> SeenSocket {
    SeenSocket {
        netns: NETNS,
        cookie,
        state,
        local: SocketAddr::from(([127, 0, 0, 1], local)),
        remote: SocketAddr::from(([127, 0, 0, 1], remote)),
        uid: 0,
        counters,
        cgroup_id: None,
        holders: vec![Holder {
            pid: 77,
            comm: "python3".into(),
        }],
    }
}

fn scan(ts_ns: u64, purpose: Purpose, sockets: Vec<SeenSocket>) -> Event {
    Event::Fact(Box::new(Fact::Sockets(SocketScan {
        ts_ns,
        purpose,
        sockets,
    })))
}

#[test]
fn update_records_carry_the_counters_so_far() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let mut st = client(1, 0).state;
    st.n_transitions = 2;
    feed(
        &mut t,
        &mut out,
        &Event::Tracked(Tracked {
            ts_ns: 10 * MS,
            states: vec![st],
        }),
        10 * MS,
    );
    let counters = SeenCounters {
        bytes_sent: 100,
        bytes_received: 2000,
        segs_in: 4,
        segs_out: 5,
        rtt_us: 30,
        ..SeenCounters::default()
    };
    let listing = scan(
        11 * MS,
        Purpose::Update,
        vec![seen(1, ESTABLISHED, 40000, 80, Some(counters))],
    );
    feed(&mut t, &mut out, &listing, 11 * MS);
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    let r = c[0];
    assert_eq!(r.kind, RecordKind::Update);
    assert_eq!((r.source.bytes, r.destination.bytes), (100, 2000));
    assert_eq!((r.conn_state, r.history.as_str()), ("S1", "ShADd"));
    assert_eq!(r.close_initiator, "none");
    assert_eq!(r.srtt_us, 30);
    assert_eq!(
        r.process.map(|p| p.pid),
        Some(42),
        "the kernel's owner wins over a holder"
    );
    assert_eq!(r.end_ns, 11 * MS);
    // At shutdown, the same connection's last record.
    let last = scan(
        12 * MS,
        Purpose::Final,
        vec![seen(1, ESTABLISHED, 40000, 80, Some(counters))],
    );
    feed(&mut t, &mut out, &last, 12 * MS);
    assert_eq!(conns(&out)[1].kind, RecordKind::Shutdown);
}

#[test]
fn a_socket_born_between_the_table_and_the_listing_waits_for_the_next_update() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let counters = SeenCounters {
        bytes_sent: 100,
        bytes_received: 2000,
        ..SeenCounters::default()
    };
    // The kernel table read at 10 ms has no socket 1 yet; the listing at 11 ms has it.
    let table = |ts_ns, states| Event::Tracked(Tracked { ts_ns, states });
    feed(&mut t, &mut out, &table(10 * MS, vec![]), 10 * MS);
    let listing = |ts_ns| {
        scan(
            ts_ns,
            Purpose::Update,
            vec![seen(1, ESTABLISHED, 40000, 80, Some(counters))],
        )
    };
    feed(&mut t, &mut out, &listing(11 * MS), 11 * MS);
    assert!(conns(&out).is_empty(), "no record without its handshake");
    // The next update has it in both.
    let mut st = client(1, 10 * MS).state;
    st.n_transitions = 2;
    feed(&mut t, &mut out, &table(20 * MS, vec![st]), 20 * MS);
    feed(&mut t, &mut out, &listing(21 * MS), 21 * MS);
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].kind, c[0].history.as_str()),
        (RecordKind::Update, "ShADd")
    );
    assert!(!c[0].pre_existing);
}

#[test]
fn seeded_sockets_start_at_the_observer_start_and_are_owned_by_their_holder() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    let listing = scan(
        5 * MS,
        Purpose::Seed,
        vec![seen(9, ESTABLISHED, 40000, 80, None)],
    );
    feed(&mut t, &mut out, &listing, 5 * MS);
    // Reset by its peer in softirq: the kernel names no owner.
    let mut c = closed(
        9,
        conn_flag::PRE_EXISTING,
        ESTABLISHED,
        &[CLOSE],
        8 * MS,
        lo(40000, 80),
    );
    c.state.flags &= !conn_flag::OWNER_VALID;
    c.state.resets_received = 1;
    feed(&mut t, &mut out, &Event::Closed(c), 8 * MS);
    t.finish(20 * MS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].pre_existing);
    assert_eq!(c[0].start_ns, 5 * MS);
    assert_eq!(c[0].process.map(|p| p.pid), Some(77));
    assert_eq!(c[0].owner_source, Some("procfs"));
}

#[test]
fn the_table_bound_counts_what_it_cannot_keep() {
    let mut t = Tracker::new([7; 16], Filter::default(), 2);
    let mut out = Vec::new();
    let sockets = (1..=3)
        .map(|i| {
            seen(
                i,
                ESTABLISHED,
                40000 + u16::try_from(i).expect("small"),
                80,
                None,
            )
        })
        .collect();
    feed(&mut t, &mut out, &scan(MS, Purpose::Seed, sockets), MS);
    feed(
        &mut t,
        &mut out,
        &Event::Counters(Counters {
            ts_ns: 2 * MS,
            ..Counters::default()
        }),
        2 * MS,
    );
    let loss: Vec<_> = out
        .iter()
        .filter_map(|o| {
            if let Output::Loss(l) = o {
                Some(l)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(loss.len(), 1);
    assert_eq!((loss[0].delta.table_full, loss[0].total.table_full), (1, 1));
}

#[test]
fn a_socket_that_closes_while_being_listed_is_one_connection() {
    let mut t = Tracker::new([7; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    // The listing was taken just before the socket closed; its close event is drained (and
    // fed) before the listing is.
    let mut c = closed(
        9,
        conn_flag::PRE_EXISTING,
        ESTABLISHED,
        &[FIN_WAIT1, FIN_WAIT2, CLOSE],
        8 * MS,
        lo(40000, 80),
    );
    c.header.ts_ns = 10 * MS;
    feed(&mut t, &mut out, &Event::Closed(c), 10 * MS);
    let stale = || {
        vec![seen(
            9,
            ESTABLISHED,
            40000,
            80,
            Some(SeenCounters::default()),
        )]
    };
    feed(
        &mut t,
        &mut out,
        &scan(9 * MS, Purpose::Seed, stale()),
        11 * MS,
    );
    feed(
        &mut t,
        &mut out,
        &scan(12 * MS, Purpose::Final, stale()),
        12 * MS,
    );
    t.finish(20 * MS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0].kind, RecordKind::Closed);
}
