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
