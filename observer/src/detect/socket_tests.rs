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
        d.table(now * S, &table, &mut alerts);
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
        d.time_wait(&census(t, count), &mut alerts);
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
