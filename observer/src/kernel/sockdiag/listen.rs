//! Listening sockets and their half-open requests, with the queue depths only a dump of those
//! states carries: a listener's `idiag_rqueue` is its accept queue length and `idiag_wqueue`
//! its backlog (`inet_diag` `inet_sk_diag_fill`); a request socket (`inet_req_diag_fill`) is
//! reported in `SYN_RECV` with its SYN-ACK retransmits in `idiag_retrans`.
//!
//! Cost: listeners come from the listening hash (cheap); requests from the established hash,
//! which the kernel walks whole (see the module's cost note): about 1 ms per namespace on an
//! idle host.

use std::net::SocketAddr;

use observer_common::{AF_INET, AF_INET6, tcp_state};

use super::{
    DIAG_MSG_LEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, Netlink, RECV_BUFFER, SOCK_DIAG_BY_FAMILY,
    SockDiagError, align4, family_name, i32_at, request, socket_addr, u16_at, u32_at,
};

/// A listener, or one of its half-open requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `LISTEN`, or `SYN_RECV` for a request.
    pub state: u8,
    /// Listener: connections waiting for `accept()`. Request: 0.
    pub queue: u32,
    /// Listener: the backlog `listen()` was given (capped by `somaxconn`). Request: 0.
    pub backlog: u32,
    /// Request: SYN-ACKs retransmitted so far.
    pub retrans: u8,
    pub inode: u64,
    /// The socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`).
    pub cookie: u64,
}

const LISTEN_AND_REQUESTS: u32 =
    1 << tcp_state::LISTEN | 1 << tcp_state::SYN_RECV | 1 << tcp_state::NEW_SYN_RECV;

/// The listeners and half-open requests of the calling thread's network namespace.
///
/// # Errors
/// When netlink cannot be used, the kernel refuses the dump, or a reply is malformed.
pub fn dump_listeners() -> Result<Vec<ListenSocket>, SockDiagError> {
    let netlink = Netlink::open()?;
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut out = Vec::new();
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        let mut req = request(family, seq, LISTEN_AND_REQUESTS);
        req[18] = 0; // no tcp_info
        netlink.send(&req)?;
        loop {
            let len = netlink.recv(&mut buffer)?;
            if parse(buffer.get(..len).unwrap_or_default(), seq, family, &mut out)? {
                break;
            }
        }
    }
    Ok(out)
}

/// Appends one datagram's sockets; true once the dump is complete.
fn parse(
    mut rest: &[u8],
    seq: u32,
    family: u16,
    out: &mut Vec<ListenSocket>,
) -> Result<bool, SockDiagError> {
    while !rest.is_empty() {
        let len = u32_at(rest, 0)
            .and_then(|len| usize::try_from(len).ok())
            .ok_or(SockDiagError::Malformed("netlink header cut short"))?;
        let payload = rest.get(NLMSG_HDRLEN..len).ok_or(SockDiagError::Malformed(
            "netlink message length out of bounds",
        ))?;
        let kind = u16_at(rest, 4).unwrap_or_default();
        let msg_seq = u32_at(rest, 8).unwrap_or_default();
        rest = rest.get(align4(len)..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        let refused = |errno: i32| SockDiagError::Refused {
            family: family_name(family),
            err: std::io::Error::from_raw_os_error(errno.saturating_neg()),
        };
        match kind {
            SOCK_DIAG_BY_FAMILY => out.push(socket(payload)?),
            NLMSG_DONE => {
                return match i32_at(payload, 0) {
                    Some(errno) if errno < 0 => Err(refused(errno)),
                    _ => Ok(true),
                };
            }
            NLMSG_ERROR => {
                let errno = i32_at(payload, 0)
                    .ok_or(SockDiagError::Malformed("netlink error message cut short"))?;
                if errno != 0 {
                    return Err(refused(errno));
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

fn socket(payload: &[u8]) -> Result<ListenSocket, SockDiagError> {
    let msg = payload
        .get(..DIAG_MSG_LEN)
        .ok_or(SockDiagError::Malformed("inet_diag_msg cut short"))?;
    let family = u16::from(msg[0]);
    if family != AF_INET && family != AF_INET6 {
        return Err(SockDiagError::Malformed(
            "socket of an unknown address family",
        ));
    }
    let at = |offset: usize| u32_at(msg, offset).unwrap_or_default();
    Ok(ListenSocket {
        local: socket_addr(family, &msg[8..24], u16::from_be_bytes([msg[4], msg[5]])),
        remote: socket_addr(family, &msg[24..40], u16::from_be_bytes([msg[6], msg[7]])),
        state: msg[1],
        retrans: msg[3],
        queue: at(56),
        backlog: at(60),
        inode: u64::from(at(68)),
        cookie: u64::from(at(44)) | (u64::from(at(48)) << 32),
    })
}
