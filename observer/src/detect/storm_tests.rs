//! The rate rules against a learnt baseline (`rst_storm`, `retransmit_storm`), fed constructed
//! streams.

use super::tests::{NETNS, Step, failed, ip, none, only, process, reset, run, summary, uid};
use super::{Config, Status, retransmit_storm, rst_storm};
use crate::track::record::{Output, RecordKind, Retransmits, Role};

/// A client reset by the host `ip(last)` at `t_s`.
fn reset_by(last: u8, n: u64, t_s: u64) -> Step {
    let Output::Connection(mut c) = reset((n % 26) as u8, t_s, Role::Client, 80, 0, 1) else {
        unreachable!()
    };
    c.destination.ip = ip(last);
    Step::R(Output::Connection(c))
}

#[test]
fn rst_storm_learns_a_subjects_usual_rate_and_fires_on_factor_times_it() {
    use Step::T;
    let mut d = only(Config {
        rst_storm: Some(rst_storm::Config {
            count: 5,
            window_s: 10,
            factor: 3,
        }),
        ..none()
    });
    let mut steps = Vec::new();
    // Host 9: four resets in each 10 s epoch for 100 s, below the floor of 5. Its baseline
    // after the ten epochs [1, 11) … [91, 101): 4 × (1 - 0.8^10) = 3.5705.
    for k in 0..10 {
        for i in 1..=4 {
            steps.push(reset_by(9, i, 10 * k + i));
        }
        steps.push(T(10 * k + 9));
    }
    // Eight at once in the next epoch: above the floor, below 3 × 3.57 = 10.7; learnt. Host 8,
    // with no baseline, fires on the same eight at its fifth.
    for i in 0..8 {
        steps.push(reset_by(9, i, 106));
        steps.push(reset_by(8, i, 106));
    }
    steps.push(T(110));
    // Baseline 0.2 × 8 + 0.8 × 3.5705 = 4.4564: threshold ceil(13.37) = 14, release
    // floor(6.68) = 6. Twenty at 117: fires at the fourteenth.
    for i in 0..20 {
        steps.push(reset_by(9, i, 117));
    }
    steps.push(T(120));
    // The usual four go on; the count falls to 6 or below when the burst leaves the window,
    // at 127, with the four inside.
    for i in 1..=4 {
        steps.push(reset_by(9, i, 120 + i));
    }
    steps.push(T(130));
    // Learning again from 127: the usual rate never fires.
    for k in 13..20 {
        for i in 1..=4 {
            steps.push(reset_by(9, i, 10 * k + i));
        }
        steps.push(T(10 * k + 9));
    }
    let alerts = run(&mut d, steps);
    assert_eq!(
        summary(&alerts),
        [
            ("rst_storm", Status::Firing, 106, 5),
            ("rst_storm", Status::Firing, 117, 14),
            ("rst_storm", Status::Resolved, 116, 0),
            ("rst_storm", Status::Resolved, 127, 4),
        ],
        "{alerts:#?}"
    );
    let fresh = &alerts[0];
    assert_eq!(fresh.subject.destination, Some((ip(8), 0)));
    assert_eq!(
        (fresh.threshold, fresh.evidence["baseline"].as_f64()),
        (5, Some(0.0))
    );
    let storm = &alerts[1];
    assert_eq!(storm.subject.destination, Some((ip(9), 0)));
    assert_eq!(storm.threshold, 14);
    assert_eq!(storm.evidence["baseline"], 4.46);
    assert_eq!(storm.evidence["factor"], 3);
    assert_eq!(storm.evidence["floor"], 5);
    assert!(
        storm.reason.contains("usually 4.46 per 10 s"),
        "{}",
        storm.reason
    );
    let back = &alerts[3];
    assert_eq!(
        back.evidence["total"], 24,
        "the burst and the usual four while firing"
    );
    assert_eq!(back.threshold, 14);
}

/// A record of connection `n` (cookie `n`) that retransmitted `data` segments so far, having
/// sent `sent`.
fn retrans(n: u8, t_s: u64, kind: RecordKind, role: Role, data: u32, sent: u32) -> Step {
    let Output::Connection(mut c) = failed(n, t_s, 443, "fin", "SF") else {
        unreachable!()
    };
    c.kind = kind;
    c.role = role;
    c.resets_received = 0;
    c.retransmits = Retransmits {
        syn: 1,
        synack: 1,
        data,
    };
    if role == Role::Server {
        c.destination.packets = sent;
        c.process = Some(process(400, "server"));
    } else {
        c.source.packets = sent;
    }
    Step::R(Output::Connection(c))
}

#[test]
fn retransmit_storm_counts_data_retransmits_since_each_record() {
    use RecordKind::{Closed, Shutdown, Update};
    use Role::{Client, Server};
    use Step::T;
    let mut d = only(Config {
        retransmit_storm: Some(retransmit_storm::Config {
            count: 40,
            window_s: 5,
            factor: 10,
        }),
        ..none()
    });
    let alerts = run(
        &mut d,
        vec![
            // A server socket of the listener on 443: 30 by its update at 1 s, 45 at its close
            // at 2 s: 30 + 15 counted, SYN and SYN-ACK retransmits never.
            retrans(0, 1, Update, Server, 30, 100),
            retrans(1, 1, Closed, Client, 0, 10),
            retrans(0, 2, Closed, Server, 45, 160),
            // Open at exit: not news.
            retrans(2, 3, Shutdown, Server, 500, 600),
            T(4),
            // Clients towards the same host: another subject (the remote host), below 40.
            retrans(3, 4, Closed, Client, 39, 100),
            T(6),
            T(7),
            T(20),
        ],
    );
    assert_eq!(
        summary(&alerts),
        [
            ("retransmit_storm", Status::Firing, 2, 45),
            ("retransmit_storm", Status::Resolved, 7, 0),
        ],
        "{alerts:#?}"
    );
    let a = &alerts[0];
    assert_eq!(a.subject.destination, Some((ip(9), 443)));
    assert_eq!(a.subject.netns, Some(NETNS));
    assert_eq!(a.subject.process.map(|p| p.pid), Some(400));
    assert_eq!(a.evidence["scope"], "listener");
    assert_eq!(a.evidence["connections"], 1);
    assert_eq!(a.evidence["segments_sent"], 160);
    assert_eq!((a.threshold, a.window_s), (40, 5));
    assert_eq!(a.samples, vec![uid(0)], "one connection, named once");
    assert!(a.reason.contains("server pid 400"), "{}", a.reason);
    assert_eq!(alerts[1].evidence["total"], 45);
}

#[test]
fn a_record_that_arrives_after_its_window_went_quiet_extends_the_storm() {
    use Step::T;
    let mut d = only(Config {
        retransmit_storm: Some(retransmit_storm::Config {
            count: 10,
            window_s: 10,
            factor: 10,
        }),
        ..none()
    });
    let alerts = run(
        &mut d,
        vec![
            retrans(0, 1, RecordKind::Closed, Role::Client, 25, 90),
            // At 11 s the window since the first record is empty; but a transfer that ended at
            // 10 s is still on its way (its record waits for its grace period, or its peer).
            Step::Held(11, 10),
            retrans(1, 10, RecordKind::Closed, Role::Client, 27, 89),
            T(12),
            T(19),
            T(20),
        ],
    );
    // Not fired, resolved at 11 s and fired again at 10 s: one storm, quiet from 20 s.
    assert_eq!(
        summary(&alerts),
        [
            ("retransmit_storm", Status::Firing, 1, 25),
            ("retransmit_storm", Status::Resolved, 20, 0),
        ],
        "{alerts:#?}"
    );
    assert_eq!(alerts[1].evidence["total"], 52);
}
