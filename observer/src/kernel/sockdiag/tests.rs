//! Parsing of constructed replies, and dumps of real sockets of this process.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use observer_common::{AF_INET, AF_INET6, tcp_state};

use super::*;

pub(super) fn so_cookie(socket: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = 8u32;
    // SAFETY: valid descriptor and out-pointers of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(SO_COOKIE)");
    cookie
}

fn inode(socket: &impl AsRawFd) -> u64 {
    // SAFETY: an all-zero stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    assert_eq!(unsafe { libc::fstat(socket.as_raw_fd(), &raw mut st) }, 0);
    st.st_ino
}

/// The inode of this process's cgroup v2 directory.
fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let index = crate::procs::CgroupIndex::new().expect("cgroup2 mount");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2 line");
    let dir = index.root().join(own.trim_start_matches('/'));
    std::fs::metadata(dir).expect("own cgroup").ino()
}

fn find(sockets: &[TcpSocket], cookie: u64) -> Option<&TcpSocket> {
    sockets.iter().find(|s| s.cookie == cookie)
}

/// Dumps until `done` holds for the dump (counters settle once the ACKs arrive), at most 5 s.
fn dump_until(done: impl Fn(&[TcpSocket]) -> bool) -> Vec<TcpSocket> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = dump_tcp().expect("dump");
        if done(&sockets) || Instant::now() > deadline {
            return sockets;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A reply of one socket message with a `tcp_info` attribute, then `NLMSG_DONE`.
fn reply(seq: u32) -> Vec<u8> {
    let mut msg = vec![0u8; DIAG_MSG_LEN];
    msg[0] = 2; // AF_INET
    msg[1] = tcp_state::ESTABLISHED;
    msg[4..6].copy_from_slice(&8080u16.to_be_bytes());
    msg[6..8].copy_from_slice(&443u16.to_be_bytes());
    msg[8..12].copy_from_slice(&[10, 0, 0, 1]);
    msg[24..28].copy_from_slice(&[192, 0, 2, 7]);
    msg[44..48].copy_from_slice(&0x1122_3344u32.to_ne_bytes());
    msg[48..52].copy_from_slice(&0x5566_7788u32.to_ne_bytes());
    msg[64..68].copy_from_slice(&1000u32.to_ne_bytes());
    msg[68..72].copy_from_slice(&4242u32.to_ne_bytes());
    let mut info = vec![0u8; 232];
    info[120..128].copy_from_slice(&99u64.to_ne_bytes());
    msg.extend_from_slice(&236u16.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
    msg.extend_from_slice(&info);
    msg.extend_from_slice(&12u16.to_ne_bytes());
    msg.extend_from_slice(&21u16.to_ne_bytes()); // INET_DIAG_CGROUP_ID
    msg.extend_from_slice(&77u64.to_ne_bytes());
    let mut out = message(SOCK_DIAG_BY_FAMILY, seq, &msg);
    out.extend(message(NLMSG_DONE, seq, &0i32.to_ne_bytes()));
    out
}

fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDRLEN + payload.len()).expect("small");
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&[0; 10]);
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn request_asks_for_every_tcp_state_with_tcp_info() {
    let req = request(AF_INET6, 9, u32::MAX);
    assert_eq!(u32_at(&req, 0), Some(72));
    assert_eq!(u16_at(&req, 4), Some(SOCK_DIAG_BY_FAMILY));
    assert_eq!(u16_at(&req, 6), Some(0x301));
    assert_eq!(u32_at(&req, 8), Some(9));
    assert_eq!(&req[16..20], &[10, 6, 2, 0]);
    assert_eq!(u32_at(&req, 20), Some(u32::MAX));
}

#[test]
fn replies_parse_and_malformed_ones_are_errors() {
    let mut out = Vec::new();
    let flow = parse_datagram(&reply(1), 1, AF_INET, &mut out, parse_socket).expect("valid reply");
    assert_eq!(flow, Flow::Done);
    let socket = &out[0];
    assert_eq!(socket.local, "10.0.0.1:8080".parse().expect("addr"));
    assert_eq!(socket.remote, "192.0.2.7:443".parse().expect("addr"));
    assert_eq!(socket.cookie, 0x5566_7788_1122_3344);
    assert_eq!(
        (socket.inode, socket.uid, socket.timewait),
        (4242, 1000, false)
    );
    let info = socket.tcp_info.expect("tcp_info");
    assert_eq!((info.len, info.bytes_acked, info.rcv_wnd), (232, 99, None));
    assert_eq!(socket.cgroup_id, Some(77));

    // Another request's messages are skipped.
    out.clear();
    assert_eq!(
        parse_datagram(&reply(1), 2, AF_INET, &mut out, parse_socket).expect("ok"),
        Flow::More
    );
    assert!(out.is_empty());

    // Every truncation is an error or a shorter parse, never a panic.
    let full = reply(1);
    for len in 0..full.len() {
        let _ = parse_datagram(&full[..len], 1, AF_INET, &mut Vec::new(), parse_socket);
    }
    assert!(matches!(
        parse_datagram(&full[..100], 1, AF_INET, &mut Vec::new(), parse_socket),
        Err(SockDiagError::Malformed(
            "netlink message length out of bounds"
        ))
    ));
    let short = message(SOCK_DIAG_BY_FAMILY, 1, &[2; 40]);
    assert!(matches!(
        parse_datagram(&short, 1, AF_INET, &mut Vec::new(), parse_socket),
        Err(SockDiagError::Malformed("inet_diag_msg cut short"))
    ));
    let mut bad_attr = vec![2u8; DIAG_MSG_LEN];
    bad_attr.extend_from_slice(&[2, 0, 2, 0]); // attribute length 2 < its own header
    let bad_attr = message(SOCK_DIAG_BY_FAMILY, 1, &bad_attr);
    assert!(matches!(
        parse_datagram(&bad_attr, 1, AF_INET, &mut Vec::new(), parse_socket),
        Err(SockDiagError::Malformed("attribute length out of bounds"))
    ));
    let zero_len = [0u8; 16];
    assert!(parse_datagram(&zero_len, 1, AF_INET, &mut Vec::new(), parse_socket).is_err());

    let refused = message(NLMSG_ERROR, 1, &(-libc::ENOENT).to_ne_bytes());
    let err =
        parse_datagram(&refused, 1, AF_INET6, &mut Vec::new(), parse_socket).expect_err("refused");
    assert!(
        err.to_string().contains("refused to dump IPv6 TCP sockets"),
        "{err}"
    );
    assert!(err.to_string().contains("modprobe tcp_diag"), "{err}");
}

#[test]
fn dump_matches_cookies_inodes_and_byte_counts_of_real_sockets() {
    const N: usize = 12_345;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(&[7; N]).expect("write");
    server.read_exact(&mut [0; N]).expect("read");
    let (c, s, l) = (so_cookie(&client), so_cookie(&server), so_cookie(&listener));

    let settled = |all: &[TcpSocket]| {
        find(all, c)
            .and_then(|x| x.tcp_info)
            .is_some_and(|i| i.unacked == 0)
    };
    let sockets = dump_until(settled);
    let (cl, sv, ls) = (
        find(&sockets, c).expect("client in dump"),
        find(&sockets, s).expect("server in dump"),
        find(&sockets, l).expect("listener in dump"),
    );
    assert_eq!(cl.inode, inode(&client));
    assert_eq!(sv.inode, inode(&server));
    assert_eq!(ls.inode, inode(&listener));
    assert_eq!(
        (cl.state, sv.state, ls.state),
        (
            tcp_state::ESTABLISHED,
            tcp_state::ESTABLISHED,
            tcp_state::LISTEN
        )
    );
    assert_eq!(cl.family, AF_INET);
    assert_eq!(cl.local, client.local_addr().expect("addr"));
    assert_eq!(cl.remote, server.local_addr().expect("addr"));
    // SAFETY: geteuid has no preconditions.
    assert_eq!(cl.uid, unsafe { libc::geteuid() });
    assert!(!cl.timewait);
    assert_eq!(cl.cgroup_id, Some(own_cgroup_id()));
    let (ci, si) = (
        cl.tcp_info.expect("client info"),
        sv.tcp_info.expect("server info"),
    );
    // bytes_acked counts sequence space: the active opener's SYN is 1 more; the passive
    // opener's SYN-ACK is not counted, nor is either SYN in bytes_received.
    assert_eq!(
        (ci.bytes_sent, ci.bytes_acked, ci.bytes_received),
        (N as u64, N as u64 + 1, 0)
    );
    assert_eq!(
        (si.bytes_sent, si.bytes_acked, si.bytes_received),
        (0, 0, N as u64)
    );

    // Each FIN is one more byte of sequence space, on both sides.
    client.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(server.read(&mut [0; 1]).expect("eof"), 0);
    let sockets = dump_until(|all| find(all, c).is_some_and(|x| x.state == tcp_state::FIN_WAIT2));
    let (ci, si) = (
        find(&sockets, c)
            .and_then(|x| x.tcp_info)
            .expect("client info"),
        find(&sockets, s)
            .and_then(|x| x.tcp_info)
            .expect("server info"),
    );
    assert_eq!((ci.bytes_sent, ci.bytes_acked), (N as u64, N as u64 + 2));
    assert_eq!(si.bytes_received, N as u64 + 1);

    // Once both sides closed, the client lives on as a time-wait socket with the same cookie.
    server.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(client.read(&mut [0; 1]).expect("eof"), 0);
    let sockets = dump_until(|all| find(all, c).is_some_and(|x| x.timewait));
    let tw = find(&sockets, c).expect("time-wait client");
    assert!(tw.timewait, "{tw:?}");
    assert_eq!(
        (tw.state, tw.inode, tw.tcp_info),
        (tcp_state::TIME_WAIT, 0, None)
    );
    assert_eq!(tw.local, client.local_addr().expect("addr"));
    assert_eq!(tw.cgroup_id, None);
}

#[test]
fn ipv6_sockets_and_ipv4_mapped_addresses() {
    let v6 = TcpListener::bind("[::1]:0").expect("bind ::1");
    let dual = TcpListener::bind("[::]:0").expect("bind ::");
    let port = dual.local_addr().expect("addr").port();
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (accepted, _) = dual.accept().expect("accept");
    let sockets = dump_tcp().expect("dump");

    let listener = find(&sockets, so_cookie(&v6)).expect("::1 listener");
    assert_eq!(listener.family, AF_INET6);
    assert_eq!(listener.local, v6.local_addr().expect("addr"));
    let mapped = find(&sockets, so_cookie(&accepted)).expect("accepted");
    assert_eq!(mapped.family, AF_INET6, "an IPv6 socket keeps its family");
    assert_eq!(
        mapped.local,
        format!("127.0.0.1:{port}").parse().expect("addr")
    );
    assert!(mapped.remote.is_ipv4());
}
