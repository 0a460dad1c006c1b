//! A minimal `NETLINK_SOCK_DIAG` client: every TCP socket that exists right now, IPv4 and IPv6,
//! with its cookie, inode, owner uid and `struct tcp_info` counters.
//!
//! Why: the probes only see what happens after they attach. A dump names the connections that
//! were already open, by the same socket cookie the probes read (`bpf_get_socket_cookie`), and
//! the inode links each one to the processes holding it (`crate::procs::socket_owners`).
//!
//! Why raw libc: one fixed-layout request and a stream of fixed-layout replies; a netlink crate
//! would be more code than it saves. Replies are parsed by byte offsets with bounds checks, so
//! a short or garbled message is a [`SockDiagError::Malformed`], never a panic.
//!
//! A dump reads the sockets of the network namespace of the *calling thread* (the netlink
//! socket belongs to the namespace it is created in); [`in_netns`] runs it in another one and
//! [`dump_all`] in all of them.
//!
//! Cost: one request per family, answered in 32 KiB datagrams of about 360 bytes a socket
//! (message + `tcp_info`). The kernel walks every bucket of its established hash table (one
//! bucket lock at a time, so the stack never stalls for long), and that table is shared by all
//! namespaces unless `net.ipv4.tcp_child_ehash_entries` is set: each dump pays for the whole
//! table and skips other namespaces' sockets. Measured on 6.18 with 262144 buckets, release
//! build: an almost empty dump takes about 1 ms, 6000 sockets 9 ms; [`dump_all`] over 21
//! namespaces took 27 ms with 2000 host sockets and 55 ms with 8000, so plan on
//! `namespaces × (1 ms + 0.15 µs × sockets on the host)`. Finding the namespaces is one `stat`
//! per process (0.6 ms for 80 processes); the thread and `setns` per namespace are noise.

mod listen;
mod netns;
mod tcp_info;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use observer_common::{AF_INET, AF_INET6, tcp_state};
use thiserror::Error;

pub use listen::{ListenSocket, dump_listeners};
pub use netns::{NetNs, TimeWaitDump, dump_all, in_netns, namespaces, time_wait_all};
pub use tcp_info::TcpInfo;

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error(
        "cannot open a NETLINK_SOCK_DIAG socket: {0} (the kernel needs CONFIG_INET_DIAG; try `modprobe inet_diag`)"
    )]
    Socket(io::Error),
    #[error("cannot send the socket dump request to the kernel: {0}")]
    Send(io::Error),
    #[error("cannot receive the socket dump from the kernel: {0}")]
    Recv(io::Error),
    #[error(
        "the kernel refused to dump {family} TCP sockets: {err} (if the module is missing, run `modprobe tcp_diag`)"
    )]
    Refused {
        family: &'static str,
        err: io::Error,
    },
    #[error("malformed sock_diag reply from the kernel: {0} (please report, with `uname -r`)")]
    Malformed(&'static str),
    #[error(
        "cannot open network namespace {path}: {err} (give a path such as /run/netns/NAME or /proc/PID/ns/net; the process may have exited)"
    )]
    OpenNamespace { path: PathBuf, err: io::Error },
    #[error(
        "cannot enter network namespace {path}: {err} (entering a namespace needs CAP_SYS_ADMIN: run observer as root)"
    )]
    EnterNamespace { path: PathBuf, err: io::Error },
    #[error("cannot start a thread to enter network namespace {path}: {err}")]
    Thread { path: PathBuf, err: io::Error },
}

/// One TCP socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// `AF_INET` or `AF_INET6`: the socket's family. An IPv6 socket talking to an IPv4 peer
    /// keeps `AF_INET6`, but its IPv4-mapped addresses come out as IPv4, as on the wire.
    pub family: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number ([`observer_common::tcp_state`]). For a time-wait socket,
    /// its substate: `TIME_WAIT`, or `FIN_WAIT2` while the peer's FIN is awaited.
    pub state: u8,
    /// Inode of the socket file; 0 for time-wait and request sockets, which have none.
    pub inode: u64,
    pub uid: u32,
    /// The socket cookie: equal to `SO_COOKIE` and to `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// A time-wait mini socket (the full socket is gone; no owner, no counters).
    pub timewait: bool,
    /// Counters; `None` for time-wait and request sockets, which carry no `tcp_info`.
    pub tcp_info: Option<TcpInfo>,
    /// The cgroup v2 id of the socket's creator (`INET_DIAG_CGROUP_ID`, sent unasked since
    /// 5.1): a key for `crate::procs::CgroupIndex` that needs no /proc scan. `None` for
    /// time-wait and request sockets.
    pub cgroup_id: Option<u64>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_FLAGS: u16 = 0x301;
const NLMSG_HDRLEN: usize = 16;
/// `nlmsghdr` + `inet_diag_req_v2`.
const REQUEST_LEN: usize = 72;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `idiag_timer` of a time-wait socket (`inet_twsk_diag_fill`); nothing else reports 3.
const TIMER_TIME_WAIT: u8 = 3;
/// The kernel sends at most 32 KiB a datagram; twice that leaves room.
const RECV_BUFFER: usize = 64 * 1024;
/// Longest wait for the next datagram of a dump.
const RECV_TIMEOUT_S: libc::time_t = 5;

/// Every TCP socket, IPv4 then IPv6, in the calling thread's network namespace.
///
/// # Errors
/// When netlink cannot be used, the kernel refuses the dump, or a reply is malformed.
pub fn dump_tcp() -> Result<Vec<TcpSocket>, SockDiagError> {
    dump_tcp_states(u32::MAX)
}

/// The TCP sockets in the states of `mask` (bit n: state n), IPv4 then IPv6, in the calling
/// thread's network namespace. The kernel filters: a dump of one rare state is cheap.
///
/// # Errors
/// As [`dump_tcp`].
pub fn dump_tcp_states(mask: u32) -> Result<Vec<TcpSocket>, SockDiagError> {
    dump(&|family, seq| request(family, seq, mask), parse_socket)
}

/// The IPv4 then IPv6 dump that `request(family, seq)` asks for, each socket read by `parse`.
fn dump<T>(
    request: &dyn Fn(u16, u32) -> [u8; REQUEST_LEN],
    parse: fn(&[u8]) -> Result<T, SockDiagError>,
) -> Result<Vec<T>, SockDiagError> {
    let netlink = Netlink::open()?;
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut out = Vec::new();
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        netlink.send(&request(family, seq))?;
        loop {
            let len = netlink.recv(&mut buffer)?;
            let datagram = buffer.get(..len).unwrap_or_default();
            if parse_datagram(datagram, seq, family, &mut out, parse)? == Flow::Done {
                break;
            }
        }
    }
    Ok(out)
}

/// A `SOCK_DIAG_BY_FAMILY` dump of TCP sockets of `family` in the states of `mask`, with
/// `tcp_info`.
fn request(family: u16, seq: u32, mask: u32) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&DUMP_FLAGS.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = u8::try_from(family).unwrap_or_default();
    req[17] = 6; // IPPROTO_TCP
    req[18] = 1 << (INET_DIAG_INFO - 1);
    req[20..24].copy_from_slice(&mask.to_ne_bytes());
    req
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

fn family_name(family: u16) -> &'static str {
    if family == AF_INET6 { "IPv6" } else { "IPv4" }
}

/// Appends the sockets of one datagram, each read by `parse`; `Done` once the kernel says the
/// dump is complete.
fn parse_datagram<T>(
    mut rest: &[u8],
    seq: u32,
    family: u16,
    out: &mut Vec<T>,
    parse: fn(&[u8]) -> Result<T, SockDiagError>,
) -> Result<Flow, SockDiagError> {
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
            err: io::Error::from_raw_os_error(errno.saturating_neg()),
        };
        match kind {
            SOCK_DIAG_BY_FAMILY => out.push(parse(payload)?),
            NLMSG_DONE => {
                // The payload is the dump's final status (0, or a negative errno).
                return match i32_at(payload, 0) {
                    Some(errno) if errno < 0 => Err(refused(errno)),
                    _ => Ok(Flow::Done),
                };
            }
            NLMSG_ERROR => {
                let errno = i32_at(payload, 0)
                    .ok_or(SockDiagError::Malformed("netlink error message cut short"))?;
                if errno != 0 {
                    return Err(refused(errno));
                }
            }
            _ => {} // NLMSG_NOOP and the like
        }
    }
    Ok(Flow::More)
}

/// The fixed part of an `inet_diag_msg` (`include/uapi/linux/inet_diag.h`), its ends read.
struct DiagMsg<'a> {
    bytes: &'a [u8; DIAG_MSG_LEN],
    family: u16,
    local: SocketAddr,
    remote: SocketAddr,
}

impl<'a> DiagMsg<'a> {
    fn parse(payload: &'a [u8]) -> Result<Self, SockDiagError> {
        let bytes: &[u8; DIAG_MSG_LEN] = payload
            .get(..DIAG_MSG_LEN)
            .and_then(|m| m.try_into().ok())
            .ok_or(SockDiagError::Malformed("inet_diag_msg cut short"))?;
        let family = u16::from(bytes[0]);
        if family != AF_INET && family != AF_INET6 {
            return Err(SockDiagError::Malformed(
                "socket of an unknown address family",
            ));
        }
        Ok(Self {
            bytes,
            family,
            local: socket_addr(
                family,
                &bytes[8..24],
                u16::from_be_bytes([bytes[4], bytes[5]]),
            ),
            remote: socket_addr(
                family,
                &bytes[24..40],
                u16::from_be_bytes([bytes[6], bytes[7]]),
            ),
        })
    }

    /// The native-order `u32` at `offset`.
    fn u32(&self, offset: usize) -> u32 {
        u32_at(self.bytes, offset).unwrap_or_default()
    }

    /// `idiag_inode`.
    fn inode(&self) -> u64 {
        u64::from(self.u32(68))
    }

    /// `idiag_cookie`: two native-order `u32`s, low first.
    fn cookie(&self) -> u64 {
        u64::from(self.u32(44)) | (u64::from(self.u32(48)) << 32)
    }
}

/// One `inet_diag_msg` and its attributes.
fn parse_socket(payload: &[u8]) -> Result<TcpSocket, SockDiagError> {
    let msg = DiagMsg::parse(payload)?;
    let mut tcp_info = None;
    let mut cgroup_id = None;
    let mut attrs = payload.get(DIAG_MSG_LEN..).unwrap_or_default();
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0).unwrap_or_default());
        let body = attrs
            .get(4..len)
            .ok_or(SockDiagError::Malformed("attribute length out of bounds"))?;
        // The top two bits of a type are flags (nested, byte order).
        match u16_at(attrs, 2).map(|kind| kind & 0x3fff) {
            Some(INET_DIAG_INFO) => tcp_info = Some(tcp_info::parse(body)),
            Some(INET_DIAG_CGROUP_ID) => {
                cgroup_id = body.try_into().ok().map(u64::from_ne_bytes);
            }
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    let state = msg.bytes[1];
    Ok(TcpSocket {
        family: msg.family,
        local: msg.local,
        remote: msg.remote,
        state,
        inode: msg.inode(),
        uid: msg.u32(64),
        cookie: msg.cookie(),
        timewait: msg.bytes[2] == TIMER_TIME_WAIT || state == tcp_state::TIME_WAIT,
        tcp_info,
        cgroup_id,
    })
}

/// An address from `idiag_src`/`idiag_dst` (network order; IPv4 in the first 4 bytes).
fn socket_addr(family: u16, raw: &[u8], port: u16) -> SocketAddr {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(raw.get(..16).unwrap_or(&[0; 16]));
    let ip = if family == AF_INET6 {
        let v6 = Ipv6Addr::from(bytes);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    match ip {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
    }
}

fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// A `NETLINK_SOCK_DIAG` socket, in the namespace of the thread that opened it.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> Result<Self, SockDiagError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(SockDiagError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never finishes a dump must not hang observer: bound each wait.
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_S,
            tv_usec: 0,
        };
        let len = libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(16);
        // SAFETY: valid descriptor; the option value is a timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(SockDiagError::Socket(io::Error::last_os_error()));
        }
        Ok(Self(fd))
    }

    /// Sends to the kernel (port 0, the default destination of an unconnected netlink socket).
    fn send(&self, message: &[u8]) -> Result<(), SockDiagError> {
        loop {
            // SAFETY: the pointer and length describe `message`.
            let sent = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                )
            };
            if sent < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SockDiagError::Send(err));
            }
            if usize::try_from(sent).ok() != Some(message.len()) {
                return Err(SockDiagError::Send(io::Error::other("short write")));
            }
            return Ok(());
        }
    }

    /// Receives one datagram; `MSG_TRUNC` makes a datagram larger than `buffer` an error
    /// instead of silently cut messages.
    fn recv(&self, buffer: &mut [u8]) -> Result<usize, SockDiagError> {
        loop {
            // SAFETY: the pointer and length describe `buffer`.
            let got = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            let Ok(got) = usize::try_from(got) else {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        let stalled = format!("the kernel sent nothing for {RECV_TIMEOUT_S} s");
                        return Err(SockDiagError::Recv(io::Error::new(
                            io::ErrorKind::TimedOut,
                            stalled,
                        )));
                    }
                    _ => return Err(SockDiagError::Recv(err)),
                }
            };
            if got > buffer.len() {
                return Err(SockDiagError::Malformed("datagram larger than 64 KiB"));
            }
            return Ok(got);
        }
    }
}

#[cfg(test)]
mod tests;
