//! Table tests of the tracker on constructed event streams.

use observer_common::{
    AF_INET, CloseInfo, ConnClosed, ConnState, Endpoints, EventHeader, Owner, Reset,
    SynackRetransmit, Transition, conn_flag, counter, kind, reset_flag,
    tcp_state::{
        CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV, SYN_SENT,
    },
};

use super::{
    Filter, GRACE_NS, SKEW_NS, Tracker,
    record::{ConnRecord, LossRecord, Output, Role, SinkLoss},
};
use crate::decode::{Counters, Event};

mod open;

const MS: u64 = 1_000_000;

fn header(kind: u16, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        len: 0,
        _pad: 0,
        ts_ns,
        pid_tgid: 0,
    }
}

fn tuple(local_port: u16, remote_port: u16) -> Endpoints {
    let mut t = Endpoints {
        local_port,
        remote_port,
        family: AF_INET,
        ..Endpoints::default()
    };
    t.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    t.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    t
}

/// A socket that lived through `path` (one transition per millisecond from `born`).
fn closed(sk: u64, flags: u16, first: u8, path: &[u8], born: u64, t: Endpoints) -> ConnClosed {
    let mut st = ConnState::zeroed();
    st.key = sk;
    st.birth_ns = born;
    st.first_state = first;
    st.flags = flags | conn_flag::TUPLE_VALID | conn_flag::OWNER_VALID;
    st.tuple = t;
    st.netns = 4_026_531_840;
    st.owner = Owner {
        tgid: 42,
        uid: 1000,
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        cgroup_id: 0,
    };
    for (i, &s) in path.iter().enumerate() {
        st.states[i] = s;
        st.ts[i] = born + MS * i as u64;
    }
    st.n_transitions = u8::try_from(path.len()).expect("short");
    let end = born + MS * (path.len() as u64 - 1);
    ConnClosed {
        header: header(kind::CONN_CLOSED, end),
        sk,
        state: st,
        close: CloseInfo {
            bytes_sent: 100,
            bytes_received: 201,
            segs_in: 5,
            segs_out: 6,
            peer_fin: 1,
            ..CloseInfo::default()
        },
    }
}

fn client(sk: u64, born: u64) -> ConnClosed {
    closed(
        sk,
        conn_flag::ROLE_CLIENT,
        CLOSE,
        &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
        born,
        tuple(40000, 80),
    )
}

fn server(sk: u64, born: u64) -> ConnClosed {
    closed(
        sk,
        conn_flag::ROLE_SERVER,
        LISTEN,
        &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
        born,
        tuple(80, 40000),
    )
}

fn run(filter: Filter, events: &[Event]) -> (Tracker, Vec<Output>) {
    let mut tracker = Tracker::new([7; 16], filter, 1024);
    let mut out = Vec::new();
    for e in events {
        tracker.ingest(e, &mut out);
        tracker.flush_due(e.ts_ns(), &mut out);
    }
    (tracker, out)
}

fn conns(out: &[Output]) -> Vec<&ConnRecord> {
    out.iter()
        .filter_map(|o| {
            if let Output::Connection(c) = o {
                Some(c)
            } else {
                None
            }
        })
        .collect()
}

fn finish(mut tracker: Tracker, mut out: Vec<Output>, at: u64) -> Vec<Output> {
    tracker.finish(at, &mut out);
    out
}

#[test]
fn client_and_server_are_oriented_from_the_originator() {
    let (t, out) = run(
        Filter::default(),
        &[
            Event::Closed(client(1, 10 * MS)),
            Event::Closed(server(2, 10 * MS)),
        ],
    );
    assert!(conns(&out).is_empty(), "held for the grace period");
    let out = finish(t, out, 20 * MS);
    let c = conns(&out);
    assert_eq!(c.len(), 2);
    let (cl, sv) = (c[0], c[1]);
    assert_eq!((cl.role, sv.role), (Role::Client, Role::Server));
    assert_eq!((cl.source.port, cl.destination.port), (40000, 80));
    assert_eq!((sv.source.port, sv.destination.port), (40000, 80));
    // The client sent 100 and received 200 (+1 for the FIN); the server the other way round.
    assert_eq!((cl.source.bytes, cl.destination.bytes), (100, 200));
    assert_eq!((sv.source.bytes, sv.destination.bytes), (200, 100));
    assert_eq!((cl.source.packets, cl.destination.packets), (6, 5));
    assert_eq!(cl.source.ip.to_string(), "10.0.0.1");
    assert_eq!(sv.source.ip.to_string(), "10.0.0.2");
    assert!(cl.lifecycle.time_wait);
    assert!(!sv.lifecycle.time_wait);
    assert_eq!(cl.process.expect("owner").name(), "curl");
    assert_eq!((cl.start_ns, cl.end_ns), (10 * MS, 14 * MS));
    assert_ne!(cl.uid, sv.uid);
    assert_eq!(cl.uid.as_str().len(), 18);
    assert!(cl.uid.as_str().starts_with('C'));
}

#[test]
fn records_wait_out_the_grace_period_then_flush_in_close_order() {
    let mut t = Tracker::new([0; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    t.ingest(&Event::Closed(client(1, 0)), &mut out);
    t.ingest(&Event::Closed(client(2, MS)), &mut out);
    let first_end = 4 * MS;
    let due = first_end + GRACE_NS + SKEW_NS;
    t.flush_due(due - 1, &mut out);
    assert!(out.is_empty());
    t.flush_due(due, &mut out);
    assert_eq!(conns(&out).len(), 1);
    t.flush_due(due + MS, &mut out);
    let c = conns(&out);
    assert_eq!(c.len(), 2);
    assert!(c[0].end_ns < c[1].end_ns);
}

fn reset(sk: u64, ts: u64, flags: u8, reason: u32) -> Event {
    Event::Reset(Reset {
        header: header(kind::RESET, ts),
        sk,
        tuple: tuple(40000, 80),
        reason,
        state: CLOSE,
        flags,
        _pad: 0,
    })
}

#[test]
fn a_reset_sent_after_close_joins_its_record() {
    let abort = closed(
        9,
        conn_flag::ROLE_CLIENT,
        CLOSE,
        &[SYN_SENT, ESTABLISHED, CLOSE],
        0,
        tuple(40000, 80),
    );
    let end = abort.header.ts_ns;
    let cases = [
        ("joined within the grace period", end + 1_000, 1, Some(12)),
        ("too late: unattributed", end + GRACE_NS + 1, 0, None),
    ];
    for (name, at, joined, reason) in cases {
        let events = [
            Event::Closed(abort),
            reset(9, at, reset_flag::SENT | reset_flag::HAS_REASON, 12),
        ];
        let (t, out) = run(Filter::default(), &events);
        let unattributed = t.unattributed_resets;
        let out = finish(t, out, at);
        let c = conns(&out);
        assert_eq!(c.len(), 1, "{name}");
        assert_eq!(c[0].resets_sent, joined, "{name}");
        assert_eq!(c[0].rst_reason, reason, "{name}");
        assert_eq!(unattributed, u64::from(1 - joined), "{name}");
    }
    // A received-RST event never joins (received resets are counted in the kernel).
    let (t, _) = run(
        Filter::default(),
        &[Event::Closed(abort), reset(9, end + 1, 0, 0)],
    );
    assert_eq!(t.unattributed_resets, 1);
}

#[test]
fn a_late_reset_undoes_the_time_wait_reading() {
    let (t, out) = run(
        Filter::default(),
        &[
            Event::Closed(client(3, 0)),
            reset(3, 4 * MS + 10, reset_flag::SENT, 0),
        ],
    );
    let out = finish(t, out, 5 * MS);
    let c = conns(&out);
    assert!(!c[0].lifecycle.time_wait);
    assert_eq!(c[0].resets_sent, 1);
}

#[test]
fn synack_retransmits_join_the_child_by_endpoints() {
    let synack = |ts, t| {
        Event::SynackRetransmit(SynackRetransmit {
            header: header(kind::SYNACK_RETRANSMIT, ts),
            listener_sk: 5,
            req: 6,
            tuple: t,
        })
    };
    let events = [
        synack(MS, tuple(80, 40000)),
        synack(2 * MS, tuple(80, 40000)),
        synack(2 * MS, tuple(80, 40001)),
        Event::Closed(server(2, 3 * MS)),
    ];
    let (t, out) = run(Filter::default(), &events);
    let out = finish(t, out, 10 * MS);
    let c = conns(&out);
    assert_eq!(c[0].retransmits.synack, 2);
    assert_eq!(c[0].retransmits.total(), 2);
}

#[test]
fn filters_and_listeners() {
    let listener = closed(
        4,
        conn_flag::ROLE_LISTENER,
        CLOSE,
        &[LISTEN, CLOSE],
        0,
        tuple(80, 0),
    );
    let events = [
        Event::Closed(client(1, 0)),
        Event::Closed(listener),
        Event::Closed(server(2, 0)),
    ];
    let cases: [(&str, Filter, usize); 5] = [
        ("no filter; listeners give no record", Filter::default(), 2),
        (
            "port on either end",
            Filter {
                port: Some(40000),
                ..Filter::default()
            },
            2,
        ),
        (
            "another port",
            Filter {
                port: Some(443),
                ..Filter::default()
            },
            0,
        ),
        (
            "this netns",
            Filter {
                netns: Some(4_026_531_840),
                ..Filter::default()
            },
            2,
        ),
        (
            "another netns",
            Filter {
                netns: Some(1),
                ..Filter::default()
            },
            0,
        ),
    ];
    for (name, filter, want) in cases {
        let (t, out) = run(filter, &events);
        assert_eq!(conns(&finish(t, out, 10 * MS)).len(), want, "{name}");
    }
}

#[test]
fn a_reused_socket_gives_two_records_with_two_uids() {
    let first = closed(
        8,
        conn_flag::ROLE_CLIENT,
        CLOSE,
        &[SYN_SENT, CLOSE],
        0,
        tuple(40000, 81),
    );
    let mut second = closed(
        8,
        conn_flag::ROLE_CLIENT,
        CLOSE,
        &[SYN_SENT, CLOSE],
        2 * MS,
        tuple(40000, 82),
    );
    // The same socket address, a new socket: a new cookie.
    second.state.key = 9;
    let (t, out) = run(
        Filter::default(),
        &[Event::Closed(first), Event::Closed(second)],
    );
    let out = finish(t, out, 10 * MS);
    let c = conns(&out);
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].destination.port, c[1].destination.port), (81, 82));
    assert_ne!(c[0].uid, c[1].uid);
}

#[test]
fn pre_existing_sockets_get_a_role_from_their_ports() {
    let old = closed(
        7,
        conn_flag::PRE_EXISTING,
        ESTABLISHED,
        &[FIN_WAIT1, FIN_WAIT2, CLOSE],
        5 * MS,
        tuple(22, 50000),
    );
    let (t, out) = run(Filter::default(), &[Event::Closed(old)]);
    let out = finish(t, out, 10 * MS);
    let c = conns(&out);
    // Local port 22, remote 50000 (ephemeral): the remote end connected.
    assert_eq!(c[0].role, Role::Server);
    assert!(c[0].pre_existing);
    assert_eq!((c[0].source.port, c[0].destination.port), (50000, 22));
    assert_eq!(c[0].lifecycle.first_state, ESTABLISHED);
    assert_eq!(c[0].start_ns, 5 * MS);
}

fn transition(sk: u64, ts: u64, old: u8, new: u8) -> Event {
    Event::Transition(Transition {
        header: header(kind::TRANSITION, ts),
        sk,
        cookie: sk,
        birth_ns: 0,
        tuple: tuple(40000, 80),
        netns: 4_026_531_840,
        old_state: old,
        new_state: new,
        flags: conn_flag::ROLE_CLIENT,
    })
}

#[test]
fn state_records_only_when_asked_and_with_the_connection_uid() {
    let events = [
        transition(1, 0, CLOSE, SYN_SENT),
        transition(1, MS, SYN_SENT, ESTABLISHED),
    ];
    let (_, quiet) = run(Filter::default(), &events);
    assert!(quiet.is_empty());
    let mut with = events.to_vec();
    with.push(Event::Closed(client(1, 0)));
    let (t, out) = run(
        Filter {
            transitions: true,
            ..Filter::default()
        },
        &with,
    );
    let out = finish(t, out, 10 * MS);
    let states: Vec<_> = out
        .iter()
        .filter_map(|o| {
            if let Output::State(s) = o {
                Some(s)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(states.len(), 2);
    assert_eq!(
        (states[1].old_state, states[1].new_state),
        (SYN_SENT, ESTABLISHED)
    );
    assert_eq!(states[0].uid, conns(&out)[0].uid);
}

fn losses(out: &[Output]) -> Vec<&LossRecord> {
    out.iter()
        .filter_map(|o| match o {
            Output::Loss(l) => Some(l),
            _ => None,
        })
        .collect()
}

#[test]
fn loss_records_report_deltas_and_a_summary() {
    let snap = |ts, ring_full, events| {
        let mut values = [0; counter::COUNT as usize];
        values[counter::RING_FULL as usize] = ring_full;
        values[counter::EVENTS as usize] = events;
        Event::Counters(Counters { ts_ns: ts, values })
    };
    let (mut t, mut out) = run(
        Filter::default(),
        &[snap(MS, 0, 10), snap(2 * MS, 3, 20), snap(3 * MS, 3, 30)],
    );
    t.note_decode_error();
    t.finish(4 * MS, &mut out);
    let losses = losses(&out);
    assert_eq!(
        losses.len(),
        2,
        "one for the drop, then the summary: {losses:#?}"
    );
    assert_eq!(
        (
            losses[0].delta.ring_full,
            losses[0].total.ring_full,
            losses[0].summary
        ),
        (3, 3, false)
    );
    assert_eq!(
        (
            losses[1].delta.ring_full,
            losses[1].delta.decode_errors,
            losses[1].summary
        ),
        (0, 1, true)
    );
    assert_eq!((losses[1].total.ring_full, losses[1].events), (3, 30));
}

#[test]
fn a_sinks_drops_alone_make_a_loss_record_with_its_delta_and_total() {
    let snap = |ts| {
        let mut values = [0; counter::COUNT as usize];
        values[counter::EVENTS as usize] = 10;
        Event::Counters(Counters { ts_ns: ts, values })
    };
    let mut t = Tracker::new([0; 16], Filter::default(), 1024);
    let mut out = Vec::new();
    t.sink_dropped("file", 0);
    t.ingest(&snap(MS), &mut out);
    assert!(out.is_empty(), "nothing dropped, nothing lost: {out:#?}");
    t.sink_dropped("file", 7);
    t.ingest(&snap(2 * MS), &mut out);
    t.ingest(&snap(3 * MS), &mut out);
    t.sink_dropped("file", 9);
    t.finish(4 * MS, &mut out);
    let losses = losses(&out);
    assert_eq!(losses.len(), 2, "the drop, then the summary: {losses:#?}");
    assert!(!losses[0].delta.any() && !losses[0].summary);
    let sink = |name, dropped, total| SinkLoss {
        name,
        dropped,
        total,
    };
    assert_eq!(losses[0].sinks, [sink("file", 7, 7)]);
    assert_eq!(losses[1].sinks, [sink("file", 2, 9)]);
}
