//! Listening sockets and their half-open requests, with the queue depths only a dump of those
//! states carries: a listener's `idiag_rqueue` is its accept queue length and `idiag_wqueue`
//! its backlog (`inet_diag` `inet_sk_diag_fill`); a request socket (`inet_req_diag_fill`) is
//! reported in `SYN_RECV` with its SYN-ACK retransmits in `idiag_retrans`.
//!
//! Cost: listeners come from the listening hash (cheap); requests from the established hash,
//! which the kernel walks whole (see the module's cost note): about 1 ms per namespace on an
//! idle host.

use std::net::SocketAddr;

use observer_common::tcp_state;

use super::{DiagMsg, SockDiagError, dump, request};

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
    let request = |family, seq| {
        let mut req = request(family, seq, LISTEN_AND_REQUESTS);
        req[18] = 0; // no tcp_info
        req
    };
    dump(&request, socket)
}

fn socket(payload: &[u8]) -> Result<ListenSocket, SockDiagError> {
    let msg = DiagMsg::parse(payload)?;
    Ok(ListenSocket {
        local: msg.local,
        remote: msg.remote,
        state: msg.bytes[1],
        retrans: msg.bytes[3],
        queue: msg.u32(56),
        backlog: msg.u32(60),
        inode: msg.inode(),
        cookie: msg.cookie(),
    })
}
