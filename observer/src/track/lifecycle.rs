//! A socket's lifecycle from its kernel transitions: the ordered states with their times, the
//! time spent in each, and the one place where the kernel's view needs interpreting.
//!
//! That place is `TIME_WAIT`. The kernel never reports a transition into it: when an actively
//! closing socket is done (`FIN_WAIT2` or CLOSING), `tcp_time_wait()` hands the connection to a
//! time-wait mini-socket (`inet_timewait_sock`, whose state is `TCP_TIME_WAIT`) and the full socket
//! goes to CLOSE. That CLOSE is therefore reported as `TIME_WAIT`. Any other CLOSE from those
//! states comes with an error or a RST (timeouts abort, resets are counted), and stays CLOSE.
//! See docs/lifecycle.md.

use observer_common::{CloseInfo, ConnState, MAX_TRANSITIONS, tcp_state};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    pub state: u8,
    pub ts_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    steps: [Step; MAX_TRANSITIONS],
    len: usize,
    /// The state before the first step: CLOSE or LISTEN at a birth, else the state first seen.
    pub first_state: u8,
    /// Transitions that did not fit and were dropped (the last one is always kept).
    pub truncated: u32,
    /// The connection continues in a time-wait mini-socket.
    pub time_wait: bool,
    /// The peer's FIN had arrived when the socket closed.
    pub fin_received: bool,
}

/// Resets the kernel did not charge to the socket before it closed: `tcp_disconnect()` and
/// `close()` with unread data send their RST after the socket reached CLOSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LateResets {
    pub sent: u16,
}

impl Lifecycle {
    #[must_use]
    pub fn derive(st: &ConnState, close: &CloseInfo, late: LateResets) -> Self {
        let len = usize::from(st.n_transitions).min(MAX_TRANSITIONS);
        let mut steps = [Step::default(); MAX_TRANSITIONS];
        for (i, step) in steps.iter_mut().enumerate().take(len) {
            *step = Step {
                state: st.states[i],
                ts_ns: st.ts[i],
            };
        }
        let mut lc = Self {
            steps,
            len,
            first_state: st.first_state,
            truncated: u32::from(st.n_transitions)
                .saturating_sub(u32::try_from(MAX_TRANSITIONS).unwrap_or(u32::MAX)),
            time_wait: false,
            fin_received: close.peer_fin != 0,
        };
        let aborted =
            close.sk_err != 0 || st.resets_sent != 0 || st.resets_received != 0 || late.sent != 0;
        if len >= 2
            && steps[len - 1].state == tcp_state::CLOSE
            && matches!(
                steps[len - 2].state,
                tcp_state::FIN_WAIT2 | tcp_state::CLOSING
            )
            && !aborted
        {
            lc.steps[len - 1].state = tcp_state::TIME_WAIT;
            lc.time_wait = true;
        }
        lc
    }

    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len]
    }

    /// The last state reached.
    #[must_use]
    pub fn final_state(&self) -> u8 {
        self.steps().last().map_or(self.first_state, |s| s.state)
    }

    /// Whether the socket ever reached `state`.
    #[must_use]
    pub fn reached(&self, state: u8) -> bool {
        self.steps().iter().any(|s| s.state == state)
    }

    /// Nanoseconds spent in each state that was left, indexed by kernel state number.
    #[must_use]
    pub fn durations_ns(&self) -> [Option<u64>; 13] {
        let mut out = [None; 13];
        for pair in self.steps().windows(2) {
            let slot = &mut out[usize::from(pair[0].state).min(12)];
            *slot = Some(slot.unwrap_or(0) + pair[1].ts_ns.saturating_sub(pair[0].ts_ns));
        }
        out
    }
}

/// The kernel's name of a TCP state, without the `TCP_` prefix.
#[must_use]
pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use observer_common::tcp_state::{
        CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_RECV,
        SYN_SENT, TIME_WAIT,
    };

    use super::*;

    fn state(first: u8, path: &[u8]) -> ConnState {
        let mut st = ConnState::zeroed();
        st.first_state = first;
        for (i, &s) in path.iter().enumerate() {
            let slot = i.min(MAX_TRANSITIONS - 1);
            st.states[slot] = s;
            st.ts[slot] = 1_000 * (i as u64 + 1);
        }
        st.n_transitions = u8::try_from(path.len()).expect("short");
        st
    }

    fn names(lc: &Lifecycle) -> Vec<&'static str> {
        lc.steps().iter().map(|s| state_name(s.state)).collect()
    }

    struct Case {
        name: &'static str,
        first: u8,
        path: &'static [u8],
        sk_err: i32,
        resets: (u16, u16, u16),
        peer_fin: u32,
        want: &'static [&'static str],
        time_wait: bool,
    }

    const CASES: &[Case] = &[
        Case {
            name: "active close hands over to time-wait",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
            sk_err: 0,
            resets: (0, 0, 0),
            peer_fin: 1,
            want: &[
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ],
            time_wait: true,
        },
        Case {
            name: "passive close ends in CLOSE",
            first: tcp_state::LISTEN,
            path: &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
            sk_err: 0,
            resets: (0, 0, 0),
            peer_fin: 1,
            want: &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            time_wait: false,
        },
        Case {
            name: "simultaneous close through CLOSING",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, FIN_WAIT1, CLOSING, CLOSE],
            sk_err: 0,
            resets: (0, 0, 0),
            peer_fin: 1,
            want: &[
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "CLOSING",
                "TIME_WAIT",
            ],
            time_wait: true,
        },
        Case {
            name: "refused connect",
            first: CLOSE,
            path: &[SYN_SENT, CLOSE],
            sk_err: 111,
            resets: (0, 1, 0),
            peer_fin: 1,
            want: &["SYN_SENT", "CLOSE"],
            time_wait: false,
        },
        Case {
            name: "FIN_WAIT2 aborted by a RST received",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
            sk_err: 0,
            resets: (0, 1, 0),
            peer_fin: 0,
            want: &["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"],
            time_wait: false,
        },
        Case {
            name: "FIN_WAIT2 timeout sends a RST",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
            sk_err: 0,
            resets: (1, 0, 0),
            peer_fin: 0,
            want: &["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"],
            time_wait: false,
        },
        Case {
            name: "a late RST undoes the time-wait reading",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
            sk_err: 0,
            resets: (0, 0, 1),
            peer_fin: 0,
            want: &["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"],
            time_wait: false,
        },
        Case {
            name: "SO_LINGER 0 abort",
            first: CLOSE,
            path: &[SYN_SENT, ESTABLISHED, CLOSE],
            sk_err: 0,
            resets: (0, 0, 1),
            peer_fin: 0,
            want: &["SYN_SENT", "ESTABLISHED", "CLOSE"],
            time_wait: false,
        },
    ];

    #[test]
    fn table() {
        for case in CASES {
            let mut st = state(case.first, case.path);
            st.resets_sent = case.resets.0;
            st.resets_received = case.resets.1;
            let close = CloseInfo {
                sk_err: case.sk_err,
                peer_fin: case.peer_fin,
                ..CloseInfo::default()
            };
            let lc = Lifecycle::derive(
                &st,
                &close,
                LateResets {
                    sent: case.resets.2,
                },
            );
            assert_eq!(names(&lc), case.want, "{}", case.name);
            assert_eq!(lc.time_wait, case.time_wait, "{}", case.name);
            assert_eq!(lc.fin_received, case.peer_fin == 1, "{}", case.name);
            assert_eq!(lc.truncated, 0, "{}", case.name);
        }
    }

    #[test]
    fn durations_cover_every_state_left() {
        let st = state(CLOSE, &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE]);
        let lc = Lifecycle::derive(&st, &CloseInfo::default(), LateResets::default());
        let d = lc.durations_ns();
        assert_eq!(d[usize::from(SYN_SENT)], Some(1_000));
        assert_eq!(d[usize::from(ESTABLISHED)], Some(1_000));
        assert_eq!(d[usize::from(FIN_WAIT1)], Some(1_000));
        assert_eq!(d[usize::from(FIN_WAIT2)], Some(1_000));
        assert_eq!(d[usize::from(TIME_WAIT)], None);
        assert_eq!(d.iter().flatten().count(), 4);
        assert_eq!(lc.final_state(), TIME_WAIT);
    }

    #[test]
    fn truncation_keeps_the_last_state_and_counts() {
        let mut st = state(CLOSE, &[SYN_SENT; MAX_TRANSITIONS]);
        st.n_transitions = 11;
        st.states[MAX_TRANSITIONS - 1] = CLOSE;
        let lc = Lifecycle::derive(
            &st,
            &CloseInfo {
                sk_err: 110,
                ..CloseInfo::default()
            },
            LateResets::default(),
        );
        assert_eq!(lc.steps().len(), MAX_TRANSITIONS);
        assert_eq!(lc.truncated, 3);
        assert_eq!(lc.final_state(), CLOSE);
    }
}
