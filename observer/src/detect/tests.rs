//! Each rule fed constructed streams: it fires at its threshold, holds while the condition
//! lasts, resolves once it cleared, and does not flap.

use std::net::{IpAddr, Ipv4Addr};

use observer_common::{CloseInfo, ConnState};

use super::{Alert, Config, Detector, Status, close_wait, connect_failures, event_loss, rst_storm};
use crate::track::{
    lifecycle::{LateResets, Lifecycle},
    record::{
        ConnRecord, End, LossRecord, Losses, Output, Process, RecordKind, Retransmits, Role, Uid,
    },
    stuck::Waiting,
    zeek::History,
};

pub(super) const S: u64 = 1_000_000_000;
pub(crate) const NETNS: u32 = 4_026_532_000;

pub(crate) fn uid(n: u8) -> Uid {
    let mut u = *b"C00000000000000000";
    u[17] = b'a' + n;
    Uid(u)
}

pub(crate) fn process(pid: u32, name: &str) -> Process {
    let mut comm = [0u8; observer_common::COMM_LEN];
    comm[..name.len()].copy_from_slice(name.as_bytes());
    Process { pid, uid: 0, comm }
}

pub(super) fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

pub(crate) fn only(rules: Config) -> Detector {
    Detector::new(&rules)
}

pub(crate) fn none() -> Config {
    Config {
        close_wait: None,
        fin_wait_2: None,
        connect_failures: None,
        event_loss: None,
        rst_storm: None,
        retransmit_storm: None,
        time_wait: None,
        tls_failures: None,
        syn_flood: None,
        accept_queue: None,
    }
}

/// (rule, status, time in s, observed) of each alert.
pub(super) fn summary(alerts: &[Alert]) -> Vec<(&'static str, Status, u64, u64)> {
    alerts
        .iter()
        .map(|a| (a.rule, a.status, a.ts_ns / S, a.observed))
        .collect()
}

pub(super) fn waiting(n: u8, pid: u32, since_s: u64) -> Waiting {
    Waiting {
        state: observer_common::tcp_state::CLOSE_WAIT,
        uid: uid(n),
        netns: NETNS,
        process: Some(process(pid, "leaky")),
        since_ns: since_s * S,
        local: (ip(1), 8080),
        remote: (ip(2), 40_000 + u16::from(n)),
        server: true,
    }
}

/// A table read at a time in seconds, its sockets in `CLOSE_WAIT` (uid, pid, since), and the
/// alerts it must raise (status, observed).
type Read = (u64, &'static [(u8, u32, u64)], &'static [(Status, u64)]);

#[test]
fn close_wait_fires_holds_and_resolves_per_process() {
    let mut d = only(Config {
        close_wait: Some(close_wait::Config { after_s: 5, min: 2 }),
        ..none()
    });
    let mut alerts = Vec::new();
    // (table time, sockets in CLOSE_WAIT: (uid, pid, since)), and what each read must raise.
    let reads: &[Read] = &[
        // Young sockets, then only one old enough: below `min`.
        (10, &[(0, 100, 8), (1, 100, 10)], &[]),
        (14, &[(0, 100, 8), (1, 100, 10)], &[]),
        // Both past 5 s: fires once, with both.
        (
            15,
            &[(0, 100, 8), (1, 100, 10), (2, 100, 14)],
            &[(Status::Firing, 2)],
        ),
        // Holds while any stays, even below `min` (no re-fire, no flap).
        (16, &[(0, 100, 8), (1, 100, 10), (2, 100, 14)], &[]),
        (20, &[(1, 100, 10), (2, 100, 14)], &[]),
        (21, &[(2, 100, 14)], &[]),
        // A socket of another process is young: nothing for it.
        (22, &[(2, 100, 14), (3, 200, 20)], &[]),
        // The last stuck one closed: resolved.
        (23, &[(3, 200, 20)], &[(Status::Resolved, 0)]),
        (24, &[], &[]),
    ];
    for &(now, socks, want) in reads {
        let table: Vec<Waiting> = socks.iter().map(|&(n, p, t)| waiting(n, p, t)).collect();
        alerts.clear();
        d.table(now * S, now * S, &table, &mut alerts);
        let got: Vec<(Status, u64)> = alerts.iter().map(|a| (a.status, a.observed)).collect();
        assert_eq!(got, want, "table at {now} s: {alerts:#?}");
    }
}

#[test]
fn close_wait_alert_names_the_process_peers_and_port() {
    let mut d = only(Config {
        close_wait: Some(close_wait::Config { after_s: 2, min: 1 }),
        ..none()
    });
    let mut alerts = Vec::new();
    d.table(
        10 * S,
        10 * S,
        &[waiting(0, 77, 3), waiting(1, 77, 7)],
        &mut alerts,
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.rule, "close_wait_stuck");
    assert_eq!(a.subject.process.map(|p| p.pid), Some(77));
    assert_eq!(
        a.subject.process.map(|p| p.name().to_owned()).as_deref(),
        Some("leaky")
    );
    assert_eq!(a.subject.netns, Some(NETNS));
    assert_eq!((a.observed, a.threshold, a.window_s), (2, 1, 2));
    assert_eq!(a.evidence["oldest_age_s"], 7);
    assert_eq!(
        a.evidence["peers"],
        serde_json::json!(["10.0.0.2:40000", "10.0.0.2:40001"])
    );
    assert_eq!(a.evidence["listen_ports"], serde_json::json!([8080]));
    assert_eq!(a.samples, vec![uid(0), uid(1)]);
    assert!(a.reason.contains("leaky (pid 77)"), "{}", a.reason);
    alerts.clear();
    d.table(11 * S, 11 * S, &[], &mut alerts);
    assert_eq!(
        summary(&alerts),
        [("close_wait_stuck", Status::Resolved, 11, 0)]
    );
    assert_eq!(alerts[0].evidence["peak"], 2);
}

pub(crate) fn failed(
    n: u8,
    end_s: u64,
    port: u16,
    reason: &'static str,
    state: &'static str,
) -> Output {
    let st = ConnState::zeroed();
    Output::Connection(ConnRecord {
        kind: RecordKind::Closed,
        uid: uid(n),
        role: Role::Client,
        pre_existing: false,
        cookie: u64::from(n),
        netns: NETNS,
        ipv6: false,
        source: End {
            ip: ip(1),
            port: 50_000 + u16::from(n),
            bytes: 0,
            packets: 1,
        },
        destination: End {
            ip: ip(9),
            port,
            bytes: 0,
            packets: 0,
        },
        start_ns: end_s * S - S / 10,
        end_ns: end_s * S,
        lifecycle: Lifecycle::derive(&st, &CloseInfo::default(), LateResets::default()),
        retransmits: Retransmits::default(),
        srtt_us: 0,
        resets_sent: 0,
        resets_received: 1,
        rst_reason: None,
        sk_err: 0,
        process: Some(process(300, "curl")),
        executable: None,
        cgroup: None,
        peer: None,
        owner_source: Some("connect"),
        conn_state: state,
        history: History::default(),
        close_initiator: "remote",
        close_reason: reason,
        handshake_rtt_us: None,
        accept_wait_us: None,
        tls: None,
    })
}

/// A stream of records (`R`) and ticks (`T`) at times in seconds; `Held(now, settled)`: a
/// tick while a record that ended at `settled` has not been handed in yet.
#[expect(
    clippy::large_enum_variant,
    reason = "a short constructed stream, built once per test"
)]
pub(crate) enum Step {
    R(Output),
    T(u64),
    Held(u64, u64),
}

pub(crate) fn run(d: &mut Detector, steps: Vec<Step>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for step in steps {
        match step {
            Step::R(o) => d.output(&o, &mut alerts),
            Step::T(t) => d.tick(t * S, t * S, &mut alerts),
            Step::Held(t, settled) => d.tick(t * S, settled * S, &mut alerts),
        }
    }
    alerts
}

fn connect_detector() -> Detector {
    only(Config {
        connect_failures: Some(connect_failures::Config {
            count: 3,
            window_s: 10,
        }),
        ..none()
    })
}

#[test]
fn connect_failures_fire_at_the_threshold_and_resolve_after_a_quiet_window() {
    use Step::{R, T};
    let mut d = connect_detector();
    let alerts = run(
        &mut d,
        vec![
            R(failed(0, 1, 80, "refused", "REJ")),
            R(failed(1, 2, 80, "refused", "REJ")),
            T(5),
            // The third within 10 s fires.
            R(failed(2, 6, 80, "timeout", "S0")),
            // More failures hold it, ticks inside the window too.
            R(failed(3, 9, 80, "refused", "REJ")),
            T(15),
            R(failed(4, 16, 80, "refused", "REJ")),
            T(25),
            // A whole window after the last failure (16 + 10): resolved, stamped at 26 s.
            T(27),
            T(40),
        ],
    );
    assert_eq!(
        summary(&alerts),
        [
            ("connect_failures", Status::Firing, 6, 3),
            ("connect_failures", Status::Resolved, 26, 0),
        ]
    );
    let fired = &alerts[0];
    assert_eq!(fired.subject.destination, Some((ip(9), 80)));
    assert_eq!(fired.subject.process.map(|p| p.pid), Some(300));
    assert_eq!(fired.evidence["refused"], 2);
    assert_eq!(fired.evidence["timeouts"], 1);
    assert_eq!(fired.samples, vec![uid(2), uid(1), uid(0)]);
    assert_eq!(alerts[1].evidence["total"], 5);
}

#[test]
fn connect_failures_count_only_failed_client_connects_per_destination() {
    use Step::{R, T};
    let cases: Vec<(&str, Vec<Step>, usize)> = vec![
        (
            "spread over more than a window",
            vec![
                R(failed(0, 1, 80, "refused", "REJ")),
                R(failed(1, 8, 80, "refused", "REJ")),
                R(failed(2, 12, 80, "refused", "REJ")),
            ],
            0,
        ),
        (
            "three destinations",
            vec![
                R(failed(0, 1, 80, "refused", "REJ")),
                R(failed(1, 1, 81, "refused", "REJ")),
                R(failed(2, 1, 82, "refused", "REJ")),
            ],
            0,
        ),
        (
            "resets and data timeouts are not connect failures",
            vec![
                R(failed(0, 1, 80, "rst_received", "RSTR")),
                R(failed(1, 1, 80, "timeout", "SF")),
                R(failed(2, 1, 80, "fin", "SF")),
            ],
            0,
        ),
        (
            "a burst, a quiet window, a burst: two firings",
            vec![
                R(failed(0, 1, 80, "refused", "REJ")),
                R(failed(1, 1, 80, "refused", "REJ")),
                R(failed(2, 1, 80, "refused", "REJ")),
                T(12),
                R(failed(3, 20, 80, "refused", "REJ")),
                R(failed(4, 20, 80, "refused", "REJ")),
                R(failed(5, 20, 80, "refused", "REJ")),
                T(31),
            ],
            4,
        ),
    ];
    for (name, steps, want) in cases {
        let alerts = run(&mut connect_detector(), steps);
        assert_eq!(alerts.len(), want, "{name}: {alerts:#?}");
    }
}

fn loss(ts_s: u64, ring_full: u64) -> Output {
    loss_of(
        ts_s,
        Losses {
            ring_full,
            ..Losses::default()
        },
    )
}

fn loss_of(ts_s: u64, delta: Losses) -> Output {
    Output::Loss(LossRecord {
        ts_ns: ts_s * S,
        delta,
        total: delta,
        events: 1000,
        summary: false,
        sinks: Vec::new(),
    })
}

fn event_loss_detector(count: u64, window_s: u64) -> Detector {
    only(Config {
        event_loss: Some(event_loss::Config { count, window_s }),
        ..none()
    })
}

#[test]
fn event_loss_fires_holds_and_resolves() {
    use Step::{R, T};
    let mut d = event_loss_detector(10, 5);
    let alerts = run(
        &mut d,
        vec![
            R(loss(1, 4)),
            T(2),
            R(loss(3, 4)),
            // 12 lost within 5 s: fires.
            R(loss(4, 4)),
            T(5),
            R(loss(6, 1)),
            T(10),
            // The last loss at 6 s: quiet from 11 s.
            T(11),
            T(20),
        ],
    );
    assert_eq!(
        summary(&alerts),
        [
            ("event_loss", Status::Firing, 4, 12),
            ("event_loss", Status::Resolved, 11, 0),
        ]
    );
    assert_eq!(alerts[0].evidence["ring_full"], 12);
    assert!(
        alerts[0].reason.contains("--ring-mib"),
        "{}",
        alerts[0].reason
    );
    assert_eq!(alerts[1].evidence["total"], 13);
}

#[test]
fn skipped_hook_runs_are_lost_events() {
    let skipped = Losses {
        recursion_misses: 3,
        ..Losses::default()
    };
    let alerts = run(
        &mut event_loss_detector(2, 5),
        vec![Step::R(loss_of(1, skipped))],
    );
    assert_eq!(summary(&alerts), [("event_loss", Status::Firing, 1, 3)]);
    assert_eq!(alerts[0].evidence["recursion_misses"], 3);
    assert_eq!(
        alerts[0].reason,
        "the observer lost 3 events within 5 s (0 ring full, 0 map full, 0 table full, 3 hook \
         runs skipped): connection records are missing; the kernel skipped hooks interrupted \
         on their CPU (docs/kernels.md)"
    );
}

#[test]
fn disabled_rules_raise_nothing() {
    use Step::{R, T};
    let mut d = only(none());
    assert!(!d.wants_table());
    let mut alerts = run(
        &mut d,
        vec![
            R(failed(0, 1, 80, "refused", "REJ")),
            R(loss(1, 1000)),
            T(100),
        ],
    );
    d.table(200 * S, 200 * S, &[waiting(0, 1, 0)], &mut alerts);
    assert!(alerts.is_empty(), "{alerts:#?}");
}

pub(crate) fn reset(n: u8, end_s: u64, role: Role, port: u16, sent: u32, received: u32) -> Output {
    let Output::Connection(mut c) = failed(n, end_s, port, "rst_received", "RSTR") else {
        unreachable!()
    };
    c.role = role;
    c.resets_sent = sent;
    c.resets_received = received;
    Output::Connection(c)
}

#[test]
fn rst_storm_per_listener_and_per_remote_host() {
    use Step::{R, T};
    let mut d = only(Config {
        rst_storm: Some(rst_storm::Config {
            count: 3,
            window_s: 5,
            factor: 10,
        }),
        ..none()
    });
    let alerts = run(
        &mut d,
        vec![
            // Three reset server connections of the listener on port 443: fires for it.
            R(reset(0, 1, Role::Server, 443, 0, 1)),
            R(reset(1, 2, Role::Server, 443, 1, 0)),
            // Clients reset by the same remote host on two ports: one subject, the host.
            R(reset(2, 2, Role::Client, 80, 0, 1)),
            R(reset(3, 2, Role::Client, 81, 0, 1)),
            R(reset(4, 3, Role::Server, 443, 0, 1)),
            // Closed without a reset: not counted.
            R(reset(5, 3, Role::Client, 80, 0, 0)),
            R(reset(6, 4, Role::Client, 82, 0, 1)),
            T(8),
            // Quiet since 3 s (listener) and 4 s (host): resolved at 8 and 9 s.
            T(9),
            T(20),
        ],
    );
    assert_eq!(
        summary(&alerts),
        [
            ("rst_storm", Status::Firing, 3, 3),
            ("rst_storm", Status::Firing, 4, 3),
            ("rst_storm", Status::Resolved, 8, 0),
            ("rst_storm", Status::Resolved, 9, 0),
        ]
    );
    let (listener, host) = (&alerts[0], &alerts[1]);
    assert_eq!(listener.subject.destination, Some((ip(9), 443)));
    assert_eq!(listener.evidence["scope"], "listener");
    assert_eq!(listener.evidence["resets_sent"], 1);
    assert_eq!(listener.evidence["resets_received"], 2);
    assert_eq!(listener.samples, vec![uid(4), uid(1), uid(0)]);
    assert_eq!(host.subject.destination, Some((ip(9), 0)));
    assert_eq!(host.evidence["scope"], "remote");
    assert_eq!(host.evidence["resets_received"], 3);
    assert_eq!(alerts[2].subject.destination, Some((ip(9), 443)));
}
