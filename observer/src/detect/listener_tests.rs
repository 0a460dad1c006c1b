//! `syn_flood` and `accept_queue_overflow` fed constructed listener samples: they fire at their
//! thresholds with the right subject and evidence, hold, resolve, and tell a flood from a burst
//! of real clients.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::json;

use super::{Alert, Config, Detector, Status, accept_queue, syn_flood};
use crate::facts::{
    Holder,
    listeners::{ListenPort, ListenSock, ListenerSample, NetnsStats, Source},
};

const S: u64 = 1_000_000_000;
const NETNS: u32 = 4_026_532_999;

fn rules(syn: Option<syn_flood::Config>, acc: Option<accept_queue::Config>) -> Detector {
    Detector::new(&Config {
        syn_flood: syn,
        accept_queue: acc,
        ..super::tests::none()
    })
    .on_boot([7; 16])
}

fn sock(port: u16, queue: u32, backlog: u32) -> ListenSock {
    ListenSock {
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        cookie: 77,
        queue,
        backlog,
        holders: vec![Holder {
            pid: 4242,
            comm: "server".into(),
        }],
        // Only read while the queue is full.
        queued: if crate::facts::listeners::queue_full(queue, backlog) {
            vec![901, 902]
        } else {
            Vec::new()
        },
    }
}

/// One port's sample: cumulative SYNs and handshakes, half-open now, SYNs from 10.9.8.0/24
/// since the previous sample, and the namespace's cumulative overflows and cookies.
struct At {
    t: u64,
    syns: u64,
    hs: u64,
    half_open: u32,
    new_syns: u64,
    queue: u32,
    overflows: u64,
    cookies: u64,
}

fn sample(a: &At) -> ListenerSample {
    ListenerSample {
        ts_ns: a.t * S,
        counted: true,
        namespaces: vec![NetnsStats {
            netns: NETNS,
            syncookies: Some(1),
            syncookies_sent: a.cookies,
            listen_overflows: a.overflows,
            listen_drops: a.overflows,
            ..NetnsStats::default()
        }],
        ports: vec![ListenPort {
            netns: NETNS,
            port: 8080,
            sockets: vec![sock(8080, a.queue, 4)],
            half_open: a.half_open,
            synack_retrans: 0,
            syns: Some(a.syns),
            handshakes: Some(a.hs),
            sources: if a.new_syns > 0 {
                vec![Source {
                    prefix: "10.9.8.0/24".into(),
                    syns: a.new_syns,
                    half_open: a.half_open,
                }]
            } else {
                Vec::new()
            },
        }],
    }
}

fn at(t: u64, syns: u64, hs: u64, half_open: u32) -> At {
    At {
        t,
        syns,
        hs,
        half_open,
        new_syns: 0,
        queue: 0,
        overflows: 0,
        cookies: 0,
    }
}

fn feed(d: &mut Detector, points: &[At]) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for p in points {
        d.listeners(&sample(p), &mut alerts);
    }
    alerts
}

fn summary(alerts: &[Alert]) -> Vec<(&'static str, Status, u64, u64)> {
    alerts
        .iter()
        .map(|a| (a.rule, a.status, a.ts_ns / S, a.observed))
        .collect()
}

#[test]
fn syn_flood_fires_on_unanswered_syns_and_resolves_after_the_window() {
    let mut d = rules(Some(syn_flood::Config::default()), None);
    // 1000 SYNs/s from t=1 to t=4, none answered; then quiet.
    let mut points = vec![at(0, 0, 0, 0)];
    for t in 1..=4 {
        points.push(At {
            new_syns: 1000,
            cookies: 900 * t,
            ..at(t, 1000 * t, 0, 100)
        });
    }
    for t in 5..=12 {
        points.push(at(t, 4000, 0, 100));
    }
    let alerts = feed(&mut d, &points);
    assert_eq!(
        summary(&alerts),
        vec![
            ("syn_flood", Status::Firing, 1, 1000),
            // The window (5 s) holds t=4..9 at t=9: 0 new SYNs.
            ("syn_flood", Status::Resolved, 9, 0),
        ]
    );
    let a = &alerts[0];
    assert_eq!(a.severity, 4);
    assert_eq!(a.threshold, 100);
    assert_eq!(a.window_s, 5);
    assert_eq!(a.subject.netns, Some(NETNS));
    assert_eq!(a.subject.process.map(|p| p.pid), Some(4242));
    assert_eq!(
        a.subject.process.map(|p| p.name().to_owned()).as_deref(),
        Some("server")
    );
    assert_eq!(
        a.subject.destination,
        Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080))
    );
    assert_eq!(a.evidence["syn_rate"], json!(1000));
    assert_eq!(a.evidence["handshake_rate"], json!(0));
    assert_eq!(a.evidence["half_open"], json!(100));
    assert_eq!(a.evidence["syncookies_sent"], json!(900));
    assert_eq!(a.evidence["syncookies"], json!(1));
    assert_eq!(
        a.evidence["sources"],
        json!([{"prefix": "10.9.8.0/24", "syns": 1000, "half_open": 100}])
    );
    assert!(a.reason.contains("most from 10.9.8.0/24"), "{}", a.reason);
    assert_eq!(alerts[1].evidence["peak_rate"], json!(1000));
    assert_eq!(alerts[1].evidence["firing_s"], json!(8));
}

#[test]
fn syn_flood_stays_quiet_for_real_clients_at_any_rate() {
    let mut d = rules(Some(syn_flood::Config::default()), None);
    // 20000 handshakes/s, each SYN answered; a few in flight at each sample.
    let points: Vec<At> = (0..=10)
        .map(|t| at(t, 20_000 * t + 7, 20_000 * t, 3))
        .collect();
    assert_eq!(feed(&mut d, &points), vec![]);
}

#[test]
fn syn_flood_needs_the_ratio_and_the_rate() {
    // Half the SYNs unanswered at 150/s: fires at ratio 50 %, not at 60 %.
    let points: Vec<At> = (0..=3).map(|t| at(t, 300 * t, 150 * t, 0)).collect();
    for (ratio, fires) in [(50, true), (60, false)] {
        let mut d = rules(
            Some(syn_flood::Config {
                ratio_pct: ratio,
                ..syn_flood::Config::default()
            }),
            None,
        );
        assert_eq!(!feed(&mut d, &points).is_empty(), fires, "ratio {ratio}");
    }
    // 50 unanswered SYNs/s: below the rate.
    let mut d = rules(Some(syn_flood::Config::default()), None);
    let slow: Vec<At> = (0..=3).map(|t| at(t, 50 * t, 0, 0)).collect();
    assert_eq!(feed(&mut d, &slow), vec![]);
}

#[test]
fn syn_flood_leaves_a_full_accept_queue_to_accept_queue_overflow() {
    let mut d = rules(
        Some(syn_flood::Config::default()),
        Some(accept_queue::Config::default()),
    );
    // Real clients retry their SYNs at 500/s into a listener whose queue (backlog 4) is full.
    let points: Vec<At> = (0..=3)
        .map(|t| At {
            queue: 5,
            overflows: 500 * t,
            ..at(t, 500 * t, 0, 0)
        })
        .collect();
    let alerts = feed(&mut d, &points);
    assert_eq!(
        summary(&alerts),
        vec![("accept_queue_overflow", Status::Firing, 1, 5)]
    );
}

#[test]
fn syn_flood_fires_on_half_open_alone_and_holds_without_flapping() {
    let mut d = rules(
        Some(syn_flood::Config {
            half_open: 20,
            ..syn_flood::Config::default()
        }),
        None,
    );
    let mut sample_without_counts = |t: u64, half_open: u32| {
        let mut s = sample(&at(t, 0, 0, half_open));
        s.counted = false;
        for p in &mut s.ports {
            p.syns = None;
            p.handshakes = None;
        }
        let mut alerts = Vec::new();
        d.listeners(&s, &mut alerts);
        alerts
    };
    let mut all = Vec::new();
    // 25 half-open fires; 15 (above half the threshold) holds; 9 resolves.
    for (t, h) in [(0, 5), (1, 25), (2, 15), (3, 12), (4, 9), (5, 30)] {
        all.extend(sample_without_counts(t, h));
    }
    assert_eq!(
        summary(&all),
        vec![
            ("syn_flood", Status::Firing, 1, 0),
            ("syn_flood", Status::Resolved, 4, 0),
            ("syn_flood", Status::Firing, 5, 0),
        ]
    );
    assert!(all[0].reason.contains("25 half-open"), "{}", all[0].reason);
    assert!(!all[0].evidence.contains_key("syn_rate"));
}

#[test]
fn syn_flood_resolves_when_the_listener_closes() {
    let mut d = rules(Some(syn_flood::Config::default()), None);
    let mut alerts = feed(&mut d, &[at(0, 0, 0, 0), at(1, 5000, 0, 0)]);
    let mut gone = sample(&at(2, 5000, 0, 0));
    gone.ports.clear();
    d.listeners(&gone, &mut alerts);
    assert_eq!(
        summary(&alerts),
        vec![
            ("syn_flood", Status::Firing, 1, 5000),
            ("syn_flood", Status::Resolved, 2, 0),
        ]
    );
}

fn queue(t: u64, queue: u32, overflows: u64) -> At {
    At {
        queue,
        overflows,
        ..at(t, 0, 0, 0)
    }
}

#[test]
fn accept_queue_fires_when_full_and_dropping_and_resolves_after_a_quiet_window() {
    let mut d = rules(None, Some(accept_queue::Config { window_s: 3 }));
    let alerts = feed(
        &mut d,
        &[
            queue(0, 2, 0),
            // Full but nothing dropped yet: quiet.
            queue(1, 5, 0),
            queue(2, 5, 3),
            // Drops stop, still full: holds.
            queue(3, 5, 3),
            queue(6, 5, 3),
            // accept() drains it; the window still holds the drops at t=2.
            queue(7, 0, 4),
            queue(9, 0, 4),
            queue(11, 0, 4),
        ],
    );
    assert_eq!(
        summary(&alerts),
        vec![
            ("accept_queue_overflow", Status::Firing, 2, 5),
            ("accept_queue_overflow", Status::Resolved, 11, 0),
        ]
    );
    let a = &alerts[0];
    assert_eq!(a.threshold, 4);
    assert_eq!(a.window_s, 3);
    assert_eq!(a.severity, 4);
    assert_eq!(a.subject.process.map(|p| p.pid), Some(4242));
    assert_eq!(
        a.subject.destination,
        Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080))
    );
    assert_eq!(a.evidence["queue"], json!(5));
    assert_eq!(a.evidence["backlog"], json!(4));
    assert_eq!(a.evidence["listen_overflows"], json!(3));
    // The connections waiting in the queue, named as their records are.
    let boot = [7; 16];
    assert_eq!(
        a.samples,
        vec![
            crate::track::uid_of(&boot, 901),
            crate::track::uid_of(&boot, 902)
        ]
    );
    assert!(
        a.reason
            .contains("server (pid 4242) does not call accept()"),
        "{}",
        a.reason
    );
    let r = &alerts[1];
    assert_eq!(r.evidence["peak"], json!(5));
    assert_eq!(r.evidence["firing_s"], json!(9));
}

#[test]
fn accept_queue_resolves_when_the_listener_closes() {
    let mut d = rules(None, Some(accept_queue::Config { window_s: 10 }));
    let mut alerts = feed(&mut d, &[queue(0, 0, 0), queue(1, 5, 2)]);
    let mut gone = sample(&queue(2, 0, 2));
    gone.ports.clear();
    d.listeners(&gone, &mut alerts);
    assert_eq!(
        summary(&alerts),
        vec![
            ("accept_queue_overflow", Status::Firing, 1, 5),
            ("accept_queue_overflow", Status::Resolved, 2, 0),
        ]
    );
    assert!(alerts[1].reason.contains("closed"), "{}", alerts[1].reason);
}
