//! The state/history mapping table.

use observer_common::{
    CloseInfo, ConnState, MAX_TRANSITIONS,
    tcp_state::{
        CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV,
        SYN_SENT,
    },
};

use super::*;
use crate::track::lifecycle::LateResets;

struct Case {
    name: &'static str,
    role: Role,
    first: u8,
    path: &'static [u8],
    pre_existing: bool,
    peer_fin: bool,
    resets: (u16, u16),
    sk_err: i32,
    bytes: (u64, u64),
    retrans: u32,
    want: (&'static str, &'static str, &'static str, &'static str),
}

const fn case(name: &'static str, role: Role, first: u8, path: &'static [u8]) -> Case {
    Case {
        name,
        role,
        first,
        path,
        pre_existing: false,
        peer_fin: false,
        resets: (0, 0),
        sk_err: 0,
        bytes: (10, 20),
        retrans: 0,
        want: ("", "", "", ""),
    }
}

const CLIENT_CLOSES: &[u8] = &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE];
const SERVER_PASSIVE: &[u8] = &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE];
const SERVER_CLOSES: &[u8] = &[SYN_RECV, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE];
const CLIENT_PASSIVE: &[u8] = &[SYN_SENT, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE];

#[expect(
    clippy::too_many_lines,
    reason = "one row per case: a table reads best whole"
)]
fn cases() -> Vec<Case> {
    vec![
        Case {
            peer_fin: true,
            want: ("SF", "ShADdFf", "local", "fin"),
            ..case(
                "client closes, server's FIN already in",
                Role::Client,
                CLOSE,
                CLIENT_CLOSES,
            )
        },
        Case {
            want: ("S2", "ShADdF", "local", "fin"),
            ..case(
                "client closes, handed to time-wait before the server's FIN",
                Role::Client,
                CLOSE,
                CLIENT_CLOSES,
            )
        },
        Case {
            peer_fin: true,
            want: ("SF", "ShADdFf", "remote", "fin"),
            ..case(
                "server, client closed first",
                Role::Server,
                LISTEN,
                SERVER_PASSIVE,
            )
        },
        Case {
            peer_fin: true,
            want: ("SF", "ShADdfF", "local", "fin"),
            ..case("server closes first", Role::Server, LISTEN, SERVER_CLOSES)
        },
        Case {
            peer_fin: true,
            want: ("SF", "ShADdfF", "remote", "fin"),
            ..case(
                "client, server closed first",
                Role::Client,
                CLOSE,
                CLIENT_PASSIVE,
            )
        },
        Case {
            peer_fin: true,
            want: ("SF", "ShADdFf", "simultaneous", "fin"),
            ..case(
                "simultaneous close",
                Role::Client,
                CLOSE,
                &[SYN_SENT, ESTABLISHED, FIN_WAIT1, CLOSING, CLOSE],
            )
        },
        Case {
            resets: (0, 1),
            sk_err: libc::ECONNREFUSED,
            bytes: (0, 0),
            want: ("REJ", "Sr", "remote", "refused"),
            ..case("refused", Role::Client, CLOSE, &[SYN_SENT, CLOSE])
        },
        Case {
            sk_err: libc::ETIMEDOUT,
            bytes: (0, 0),
            want: ("S0", "S", "none", "timeout"),
            ..case("unanswered SYN", Role::Client, CLOSE, &[SYN_SENT, CLOSE])
        },
        Case {
            resets: (1, 0),
            want: ("RSTO", "ShADdR", "local", "rst_sent"),
            ..case(
                "client aborts (SO_LINGER 0)",
                Role::Client,
                CLOSE,
                &[SYN_SENT, ESTABLISHED, CLOSE],
            )
        },
        Case {
            resets: (0, 1),
            sk_err: libc::ECONNRESET,
            want: ("RSTO", "ShADdR", "remote", "rst_received"),
            ..case(
                "server reset by the client",
                Role::Server,
                LISTEN,
                &[SYN_RECV, ESTABLISHED, CLOSE],
            )
        },
        Case {
            resets: (0, 1),
            sk_err: libc::ECONNRESET,
            want: ("RSTR", "ShADdr", "remote", "rst_received"),
            ..case(
                "client reset by the server",
                Role::Client,
                CLOSE,
                &[SYN_SENT, ESTABLISHED, CLOSE],
            )
        },
        Case {
            retrans: 12,
            peer_fin: true,
            want: ("SF", "ShADdTTFf", "local", "fin"),
            ..case(
                "client retransmitted 12 times",
                Role::Client,
                CLOSE,
                CLIENT_CLOSES,
            )
        },
        Case {
            pre_existing: true,
            peer_fin: true,
            want: ("SF", "DdFf", "local", "fin"),
            ..case(
                "pre-existing, closed",
                Role::Unknown,
                ESTABLISHED,
                &[FIN_WAIT1, FIN_WAIT2, CLOSE],
            )
        },
        Case {
            sk_err: libc::EHOSTUNREACH,
            bytes: (0, 0),
            want: ("S0", "S", "none", "unreachable"),
            ..case("no route", Role::Client, CLOSE, &[SYN_SENT, CLOSE])
        },
    ]
}

fn lifecycle(c: &Case) -> Lifecycle {
    let mut st = ConnState::zeroed();
    st.first_state = c.first;
    for (i, &s) in c.path.iter().enumerate() {
        st.states[i] = s;
        st.ts[i] = (i as u64 + 1) * 1_000;
    }
    st.n_transitions = u8::try_from(c.path.len().min(MAX_TRANSITIONS)).expect("short");
    st.resets_sent = c.resets.0;
    st.resets_received = c.resets.1;
    let close = CloseInfo {
        sk_err: c.sk_err,
        peer_fin: u32::from(c.peer_fin),
        ..CloseInfo::default()
    };
    Lifecycle::derive(&st, &close, LateResets::default())
}

#[test]
fn table() {
    for c in cases() {
        let lc = lifecycle(&c);
        let mut f = Facts::from_lifecycle(c.role, c.pre_existing, &lc);
        f.orig_bytes = c.bytes.0;
        f.resp_bytes = c.bytes.1;
        f.local_retransmits = c.retrans;
        f.resets_sent = u32::from(c.resets.0);
        f.resets_received = u32::from(c.resets.1);
        f.sk_err = c.sk_err;
        let got = (
            conn_state(&f),
            history(&f),
            close_initiator(&f),
            close_reason(&f),
        );
        assert_eq!((got.0, got.1.as_str(), got.2, got.3), c.want, "{}", c.name);
    }
}

#[test]
fn open_connections_are_s1() {
    let c = case("open", Role::Client, CLOSE, &[SYN_SENT, ESTABLISHED]);
    let mut f = Facts::from_lifecycle(c.role, false, &lifecycle(&c));
    f.open = true;
    assert_eq!(
        (conn_state(&f), close_initiator(&f), close_reason(&f)),
        ("S1", "none", "open")
    );
}
