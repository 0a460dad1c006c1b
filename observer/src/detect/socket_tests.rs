//! The rules fed by kernel table reads and socket records beyond `close_wait_stuck`
//! (`fin_wait_2_stuck`, …), on constructed streams.

use observer_common::tcp_state::FIN_WAIT2;

use super::tests::{NETNS, S, ip, none, only, process, summary, uid, waiting};
use super::{Config, Status, close_wait, fin_wait_2};
use crate::track::stuck::Waiting;

/// A client socket of `pid` in `FIN_WAIT2` since `since_s`, towards 10.0.0.2:8080.
fn half_closed(n: u8, pid: u32, since_s: u64) -> Waiting {
    Waiting {
        state: FIN_WAIT2,
        uid: uid(n),
        netns: NETNS,
        process: Some(process(pid, "uploader")),
        since_ns: since_s * S,
        local: (ip(1), 50_000 + u16::from(n)),
        remote: (ip(2), 8080),
        server: false,
    }
}

/// (rule, status, time in s, observed) of each alert a step must raise.
type Alerts = Vec<(&'static str, Status, u64, u64)>;

#[test]
fn fin_wait_2_counts_only_its_state_per_process_and_resolves_when_none_is_left() {
    let mut d = only(Config {
        close_wait: Some(close_wait::Config { after_s: 5, min: 1 }),
        fin_wait_2: Some(fin_wait_2::Config { after_s: 3, min: 2 }),
        ..none()
    });
    // (time in s, the table) and the alerts of each read.
    let reads: Vec<(u64, Vec<Waiting>, Alerts)> = vec![
        // One FIN_WAIT2 past 3 s: below min 2. A young CLOSE_WAIT.
        (10, vec![half_closed(0, 50, 6), waiting(1, 60, 9)], vec![]),
        // Two past 3 s: fin_wait_2_stuck fires for pid 50 with both; the CLOSE_WAIT of pid 60
        // is 3 s old: not yet.
        (
            12,
            vec![
                half_closed(0, 50, 6),
                half_closed(2, 50, 9),
                waiting(1, 60, 9),
            ],
            vec![("fin_wait_2_stuck", Status::Firing, 12, 2)],
        ),
        // The CLOSE_WAIT is now 5 s old: only its rule fires; FIN_WAIT2 holds, no repeat.
        (
            14,
            vec![
                half_closed(0, 50, 6),
                half_closed(2, 50, 9),
                waiting(1, 60, 9),
            ],
            vec![("close_wait_stuck", Status::Firing, 14, 1)],
        ),
        // One FIN_WAIT2 gone (the peer closed at last): still firing, below min, no flap.
        (15, vec![half_closed(2, 50, 9), waiting(1, 60, 9)], vec![]),
        // The last one gone: resolved.
        (
            16,
            vec![waiting(1, 60, 9)],
            vec![("fin_wait_2_stuck", Status::Resolved, 16, 0)],
        ),
    ];
    for (now, table, want) in reads {
        let mut alerts = Vec::new();
        d.table(now * S, now * S, &table, &mut alerts);
        assert_eq!(summary(&alerts), want, "read at {now} s: {alerts:#?}");
        if let Some(a) = alerts.iter().find(|a| a.rule == "fin_wait_2_stuck") {
            assert_eq!(a.subject.process.map(|p| p.pid), Some(50));
            assert_eq!(a.subject.netns, Some(NETNS));
            assert_eq!(a.window_s, 3);
            assert_eq!(a.threshold, 2);
            if a.status == Status::Firing {
                assert_eq!(a.evidence["oldest_age_s"], 6);
                assert_eq!(
                    a.evidence["peers"],
                    serde_json::json!(["10.0.0.2:8080"]),
                    "one peer, named once"
                );
                assert_eq!(a.evidence["listen_ports"], serde_json::json!([]));
                assert_eq!(a.samples, vec![uid(0), uid(2)]);
                assert!(a.reason.contains("uploader (pid 50)"), "{}", a.reason);
                assert!(a.reason.contains("FIN_WAIT2"), "{}", a.reason);
            } else {
                assert_eq!(a.evidence["peak"], 2);
            }
        }
    }
}

fn census(t_s: u64, count: u32) -> crate::facts::TimeWaitCensus {
    use crate::facts::{NetnsTimeWait, TimeWaitCensus};
    let dest = std::net::SocketAddr::new(ip(9), 80);
    TimeWaitCensus {
        ts_ns: t_s * S,
        namespaces: vec![
            NetnsTimeWait {
                netns: NETNS,
                port_range: Some((40_000, 40_099)),
                pairs: vec![(ip(1), dest, count)],
            },
            // A namespace whose range could not be read: never judged.
            NetnsTimeWait {
                netns: NETNS + 1,
                port_range: None,
                pairs: vec![(ip(1), dest, 100_000)],
            },
        ],
    }
}

#[test]
fn time_wait_pressure_against_the_port_range_names_the_churner() {
    use crate::track::record::Output;
    let mut d = only(Config {
        time_wait: Some(super::time_wait::Config { percent: 50 }),
        ..none()
    });
    let mut alerts = Vec::new();
    // Three connections from curl (pid 300) to 10.0.0.9:80 that it closed first, one that the
    // server closed first (not parked here).
    for (n, initiator) in [(0, "local"), (1, "local"), (2, "remote"), (3, "local")] {
        let Output::Connection(mut c) = super::tests::failed(n, 1, 80, "fin", "SF") else {
            unreachable!()
        };
        c.close_initiator = initiator;
        c.resets_received = 0;
        d.output(&Output::Connection(c), &mut alerts);
    }
    // (time in s, time-wait sockets) and the alerts: fires at 50 of 100, holds down to 25,
    // resolves below.
    let steps: [(u64, u32, Alerts); 5] = [
        (2, 49, vec![]),
        (4, 50, vec![("time_wait_pressure", Status::Firing, 4, 50)]),
        (6, 70, vec![]),
        (8, 25, vec![]),
        (
            10,
            24,
            vec![("time_wait_pressure", Status::Resolved, 10, 24)],
        ),
    ];
    for (t, count, want) in steps {
        alerts.clear();
        d.time_wait(&census(t, count), t * S, &mut alerts);
        assert_eq!(summary(&alerts), want, "census at {t} s: {alerts:#?}");
        for a in &alerts {
            assert_eq!(a.subject.netns, Some(NETNS));
            assert_eq!(a.subject.destination, Some((ip(9), 80)));
            assert_eq!(a.subject.process.map(|p| p.pid), Some(300));
            assert_eq!((a.threshold, a.window_s), (50, 60));
            assert_eq!(a.evidence["port_range"], serde_json::json!([40000, 40099]));
            assert_eq!(a.evidence["port_range_size"], 100);
            assert_eq!(a.evidence["local_ip"], "10.0.0.1");
            assert_eq!(a.evidence["closed_locally"], 3);
        }
        if let Some(a) = alerts.first() {
            if a.status == Status::Firing {
                assert_eq!(a.samples, vec![uid(3), uid(1), uid(0)]);
                assert!(a.reason.contains("curl (pid 300)"), "{}", a.reason);
                assert!(a.reason.contains("50% of the 100"), "{}", a.reason);
            } else {
                assert_eq!(a.evidence["peak"], 70);
                assert!(a.samples.is_empty());
            }
        }
    }
}

/// A handshake record of a client (pid 300) of 10.0.0.9:443, or of that server (pid 400),
/// ending at `t_s`.
pub(crate) fn handshake(
    n: u8,
    t_s: u64,
    server: bool,
    established: bool,
) -> crate::track::record::Output {
    use crate::tls::{TlsFacts, TlsProcess, TlsRecord, TlsRole};
    let (client_end, server_end) = ((1u8, 50_000 + u16::from(n)), (9u8, 443u16));
    let ((l, lp), (r, rp)) = if server {
        (server_end, client_end)
    } else {
        (client_end, server_end)
    };
    let addr = |last: u8| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, last]);
        a
    };
    let mut comm = [0u8; 16];
    let name: &[u8] = if server { b"nginx" } else { b"curl" };
    comm[..name.len()].copy_from_slice(name);
    crate::track::record::Output::Tls(Box::new(TlsRecord {
        cookie_birth: None,
        uid: Some(uid(n)),
        cookie: u64::from(n),
        netns: NETNS,
        tuple: Some(observer_common::Endpoints {
            local_addr: addr(l),
            remote_addr: addr(r),
            local_port: lp,
            remote_port: rp,
            family: observer_common::AF_INET,
            _pad: 0,
        }),
        start_ns: t_s * S - S / 100,
        end_ns: t_s * S,
        process: Some(TlsProcess {
            pid: if server { 400 } else { 300 },
            tid: 1,
            comm,
        }),
        facts: TlsFacts {
            established,
            server_name: Some("shop.test".to_owned()),
            error: (!established).then(|| {
                if server {
                    "alert received: unknown_ca"
                } else {
                    "alert sent: unknown_ca"
                }
                .to_owned()
            }),
            role: Some(if server {
                TlsRole::Server
            } else {
                TlsRole::Client
            }),
            source: "uprobe+wire",
            ..TlsFacts::default()
        },
    }))
}

#[test]
fn tls_handshake_failures_per_server_and_side() {
    use super::tests::Step::{R, T};
    let mut d = only(Config {
        tls_failures: Some(super::tls_failures::Config {
            count: 3,
            window_s: 5,
        }),
        ..none()
    });
    let alerts = super::tests::run(
        &mut d,
        vec![
            // Established handshakes never count.
            R(handshake(0, 1, false, true)),
            R(handshake(1, 1, false, false)),
            R(handshake(1, 1, true, false)),
            R(handshake(2, 2, false, false)),
            R(handshake(2, 2, true, false)),
            T(3),
            // The third failure of each side: two subjects fire.
            R(handshake(3, 4, false, false)),
            R(handshake(3, 4, true, false)),
            T(8),
            // A whole window after the last: both resolve at 9.
            T(9),
            T(20),
        ],
    );
    assert_eq!(
        summary(&alerts),
        [
            ("tls_handshake_failures", Status::Firing, 4, 3),
            ("tls_handshake_failures", Status::Firing, 4, 3),
            ("tls_handshake_failures", Status::Resolved, 9, 0),
            ("tls_handshake_failures", Status::Resolved, 9, 0),
        ],
        "{alerts:#?}"
    );
    let (client, server) = (&alerts[0], &alerts[1]);
    for (a, scope, pid, error) in [
        (client, "remote", 300, "alert sent: unknown_ca"),
        (server, "server", 400, "alert received: unknown_ca"),
    ] {
        assert_eq!(a.subject.destination, Some((ip(9), 443)));
        assert_eq!(a.subject.process.map(|p| p.pid), Some(pid));
        assert_eq!(a.evidence["scope"], scope);
        assert_eq!(a.evidence["errors"], serde_json::json!({ error: 3 }));
        assert_eq!(a.evidence["server_name"], "shop.test");
        assert_eq!(a.samples, vec![uid(3), uid(2), uid(1)]);
        assert!(a.reason.contains("SNI shop.test"), "{}", a.reason);
    }
    assert_eq!(alerts[2].evidence["total"], 3);
}
