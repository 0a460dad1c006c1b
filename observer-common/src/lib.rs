//! The kernel/user ABI of observer.
//!
//! Every type here crosses the boundary between the eBPF programs and userspace, either as a
//! ring-buffer event, a map value, or a load-time global. All are `#[repr(C)]` with explicit
//! padding and no `bool`, and their sizes are asserted at compile time so that both sides fail
//! to build rather than disagree. Event kinds have fixed discriminants; a retired number is never
//! reused.
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding is part of the ABI"
)]

use core::mem::{align_of, size_of};

pub mod nesting;

/// Bumped whenever a layout below changes. Recordings carry it, and replay refuses a mismatch.
/// 7: [`ProcessExec`] gained the executed file's path (`exe`, `exe_len`); 6's shorter record
/// still decodes.
pub const ABI_VERSION: u32 = 7;

/// Transitions kept per socket in the kernel. Beyond this the last slot is overwritten, so the
/// final state is never lost, and `ConnState::n_transitions` tells how many there were.
pub const MAX_TRANSITIONS: usize = 8;

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// `AF_INET` and `AF_INET6`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Event kinds. Explicit and permanent: a retired number is never reused.
pub mod kind {
    /// [`crate::ConnClosed`]: a socket reached CLOSE; its whole kernel-side lifecycle.
    pub const CONN_CLOSED: u16 = 1;
    /// [`crate::Transition`]: one state change, only with `--transitions`.
    pub const TRANSITION: u16 = 2;
    /// [`crate::Reset`]: a RST on a socket the kernel map no longer (or never) tracked.
    pub const RESET: u16 = 3;
    /// [`crate::SynackRetransmit`]: a SYN-ACK retransmitted for a request socket.
    pub const SYNACK_RETRANSMIT: u16 = 4;
    /// [`crate::ProcessExec`]: a process called `execve()`.
    pub const PROCESS_EXEC: u16 = 5;
    /// [`crate::ProcessExit`]: a process (its thread-group leader) exited.
    pub const PROCESS_EXIT: u16 = 6;
    /// [`crate::TlsHello`]: the first bytes of a TLS handshake segment (`ClientHello`,
    /// `ServerHello` or an alert), cleartext on the wire.
    pub const TLS_HELLO: u16 = 7;
    /// [`crate::TlsHandshake`]: a TLS library's handshake call completed, failed or was
    /// abandoned.
    pub const TLS_HANDSHAKE: u16 = 8;
    /// [`crate::TlsAlpn`]: the ALPN protocol a TLS library reported as negotiated.
    pub const TLS_ALPN: u16 = 9;
}

/// The header every event starts with. It never moves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u16,
    /// Total length of the event in bytes, header included.
    pub len: u16,
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()` of whatever task was current: tgid << 32 | tid.
    pub pid_tgid: u64,
}

/// Both ends of a socket, from the socket's own point of view. Ports are in host order;
/// an IPv4 address fills the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// The process that owns a socket: the caller of `connect()`, `listen()` or `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
    /// The task's cgroup v2 id (`bpf_get_current_cgroup_id`): the inode of its cgroup directory.
    pub cgroup_id: u64,
}

/// `ConnState::flags`.
pub mod conn_flag {
    /// Born by `CLOSE→SYN_SENT` inside `connect()`.
    pub const ROLE_CLIENT: u16 = 1 << 0;
    /// Born by `LISTEN→SYN_RECV`: a child of a listener.
    pub const ROLE_SERVER: u16 = 1 << 1;
    /// Entered LISTEN.
    pub const ROLE_LISTENER: u16 = 1 << 2;
    /// First seen mid-life: the socket existed before the observer started.
    pub const PRE_EXISTING: u16 = 1 << 3;
    /// `ConnState::tuple` has been read from the socket.
    pub const TUPLE_VALID: u16 = 1 << 4;
    /// `ConnState::owner` is known; the bits below say where it came from.
    pub const OWNER_VALID: u16 = 1 << 5;
    /// The owner is the process that listened (a server socket not yet seen in its own
    /// process's context).
    pub const OWNER_LISTENER: u16 = 1 << 6;
    /// The owner returned it from `accept()` (`--accept-hook`).
    pub const OWNER_ACCEPT: u16 = 1 << 7;
    /// The owner closed, shut down or aborted it: the process that used it last.
    pub const OWNER_CLOSE: u16 = 1 << 8;
    /// Any of the owner-source bits.
    pub const OWNER_SOURCES: u16 = OWNER_LISTENER | OWNER_ACCEPT | OWNER_CLOSE;
    /// The entry lives in the `CONNS` hash map, not in a slot.
    pub const IN_HASH: u16 = 1 << 9;
}

/// Entries of the `SLOTS` array: small enough (92 KiB) to stay in a core's L2 cache next to
/// the TCP stack's own working set, where claiming and finding a slot costs a few nanoseconds
/// instead of a cache miss (measured: 512 slots cost 2.9 µs per loopback connection, 2048
/// slots 5.6 µs, 65536 slots 7.5 µs). Sockets whose two slots are taken go to the `CONNS`
/// hash map, sized by `--max-connections`.
pub const HOT_SLOTS: u32 = 512;

/// The first of a socket's two slots in an array of `1 << bits` slots (Fibonacci hashing of
/// its cookie).
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the top `bits` (≤ 32) bits of the hash"
)]
pub const fn slot_of(cookie: u64, bits: u32) -> u32 {
    cookie
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_shr(64 - bits) as u32
}

/// Key of the `LISTENERS` map: a listening port in a network namespace.
#[must_use]
pub const fn listener_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 16) | port as u64
}

/// Per-socket state, kept in the kernel's `SLOTS` array (or, when both of a socket's slots
/// are taken, the `CONNS` hash map), keyed by the socket's address. Transitions accumulate
/// here; userspace gets one [`ConnClosed`] when the socket closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// The socket's `SO_COOKIE`, unique per socket for the life of the kernel; 0 marks a free
    /// slot. (The socket's address cannot key slots: the verifier forbids hashing a pointer.)
    pub key: u64,
    /// When the socket was born (its first transition) or first seen.
    pub birth_ns: u64,
    // Every transition touches only the fields up to `resets_received`: the first 96 bytes,
    // two cache lines.
    /// Timestamp of each transition in `states`.
    pub ts: [u64; MAX_TRANSITIONS],
    /// The new state of each transition, in order.
    pub states: [u8; MAX_TRANSITIONS],
    pub flags: u16,
    /// How many transitions happened, saturating at 255.
    pub n_transitions: u8,
    /// The state before the first recorded transition.
    pub first_state: u8,
    pub resets_sent: u16,
    pub resets_received: u16,
    /// `tcp:tcp_retransmit_skb` while in `SYN_SENT`.
    pub retrans_syn: u32,
    /// `tcp:tcp_retransmit_skb` in any other state.
    pub retrans_data: u32,
    /// The kernel's `enum sk_rst_reason` of the last RST sent, plus one; 0 when unknown.
    pub rst_reason: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// When `accept()` returned it, for server sockets (`--accept-hook`).
    pub accept_ns: u64,
    /// A server socket's smoothed RTT when it became established, in µs: its first sample is
    /// the time from its SYN-ACK to the handshake's last ACK.
    pub handshake_rtt_us: u32,
    pub _pad: u32,
    pub tuple: Endpoints,
    pub owner: Owner,
}

impl ConnState {
    #[must_use]
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer or an array of integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Kernel counters read from `tcp_sock` and `sock` at CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseInfo {
    /// `tcp_sock.bytes_received`: sequence space received (payload, plus one for a FIN).
    pub bytes_received: u64,
    /// `tcp_sock.bytes_sent`: payload bytes transmitted, retransmissions included.
    pub bytes_sent: u64,
    /// `tcp_sock.bytes_retrans`: payload bytes retransmitted.
    pub bytes_retrans: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// `tcp_sock.srtt_us`: smoothed RTT in microseconds, times 8.
    pub srtt_us_x8: u32,
    pub total_retrans: u32,
    /// `sock.sk_err`: why the socket died (ECONNREFUSED, ETIMEDOUT, ECONNRESET, …), or 0.
    pub sk_err: i32,
    /// 1 when `SOCK_DONE` is set in `sock.sk_flags`: `tcp_fin()` ran, the peer's FIN arrived.
    /// (`sk_shutdown` cannot tell: `close()` sets both bits on an orphaned socket.)
    pub peer_fin: u32,
}

/// [`kind::CONN_CLOSED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnClosed {
    pub header: EventHeader,
    /// Kernel address of the socket.
    pub sk: u64,
    pub state: ConnState,
    pub close: CloseInfo,
}

/// [`kind::TRANSITION`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub header: EventHeader,
    pub sk: u64,
    /// `SO_COOKIE`: with `birth_ns`, joins the transition to its connection's uid.
    pub cookie: u64,
    /// `ConnState::birth_ns` of the socket, so the transition joins its connection's uid.
    pub birth_ns: u64,
    pub tuple: Endpoints,
    pub netns: u32,
    pub old_state: u8,
    pub new_state: u8,
    /// `ConnState::flags` at the time of the transition.
    pub flags: u16,
}

/// `Reset::flags`.
pub mod reset_flag {
    /// The RST was sent by this host (`tcp_send_reset`); otherwise received.
    pub const SENT: u8 = 1 << 0;
    /// `Reset::reason` holds the kernel's `enum sk_rst_reason` (6.10+).
    pub const HAS_REASON: u8 = 1 << 1;
    /// `Reset::tuple` is filled.
    pub const TUPLE_VALID: u8 = 1 << 2;
}

/// [`kind::RESET`]: a RST on a socket not (or no longer) in the kernel map: a socket that
/// already reached CLOSE (`tcp_disconnect` sends its RST after CLOSE), a time-wait socket, or no
/// socket at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub header: EventHeader,
    /// Kernel address of the socket, or 0.
    pub sk: u64,
    pub tuple: Endpoints,
    pub reason: u32,
    /// Socket state as the tracepoint reported it.
    pub state: u8,
    pub flags: u8,
    pub _pad: u16,
}

/// [`kind::SYNACK_RETRANSMIT`]. The child socket does not exist yet, so userspace joins this to
/// the child's record by its endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynackRetransmit {
    pub header: EventHeader,
    /// The listener.
    pub listener_sk: u64,
    /// The request socket.
    pub req: u64,
    /// From the listener's side: local is the listening address.
    pub tuple: Endpoints,
}

/// Per-CPU counts of the segments that reached one listening socket (`LISTEN_COUNTS`, keyed
/// by the listener's socket cookie) since the observer attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenCounts {
    /// SYNs (SYN without ACK).
    pub syns: u64,
    /// Pure ACKs: the last step of a handshake (to a queued request or as a SYN cookie).
    pub acks: u64,
}

/// Key of the per-source-prefix SYN counters (`SYN_SOURCES`): a listener's socket cookie and
/// the SYN's source /24 (IPv4, first 3 bytes of `prefix`) or /64 (IPv6, 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SynSourceKey {
    pub cookie: u64,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 7],
    pub prefix: [u8; 8],
}

/// Bytes of an executed file name kept in [`ProcessExec`], NUL included.
pub const EXEC_PATH_LEN: usize = 256;

/// Bytes of [`ProcessExec::exe`]: a path of up to `EXE_PATH_LEN / 2` bytes (the kernel writes each
/// component through a window of half the buffer).
pub const EXE_PATH_LEN: usize = 512;

/// [`kind::PROCESS_EXEC`]: `header.pid_tgid` is the process; userspace names the owners of
/// sockets by it, even once the process has exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessExec {
    pub header: EventHeader,
    /// The file name passed to `execve()`, NUL-terminated, truncated to fit.
    pub filename: [u8; EXEC_PATH_LEN],
    /// The file the process now runs (`mm->exe_file`), symbolic links resolved, as the names of
    /// its path's components from the file up to the root of its mount namespace, each
    /// NUL-terminated: `python3.11\0bin\0usr\0` is `/usr/bin/python3.11`.
    pub exe: [u8; EXE_PATH_LEN],
    /// Bytes of `exe` used; 0 when the path could not be walked to the root (too deep, too
    /// long, or a read failed): userspace then falls back to `filename` and /proc.
    pub exe_len: u32,
    pub _pad: u32,
}

impl ProcessExec {
    /// The size of the record before ABI 7, without `exe`: recordings of ABI 4 to 6 carry it.
    pub const ABI6_SIZE: usize = size_of::<EventHeader>() + EXEC_PATH_LEN;
}

/// [`kind::PROCESS_EXIT`]: `header.pid_tgid` is the process whose leader exited; its pid may be
/// reused from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    pub header: EventHeader,
}

/// Bytes of a handshake segment kept in [`TlsHello`]: enough for a `ServerHello` and for the
/// `ClientHello`s of `OpenSSL` 3, `GnuTLS`, Go and rustls up to their SNI and ALPN extensions.
pub const TLS_CAPTURE_LEN: usize = 1024;

/// `TlsHello::direction`.
pub mod tls_dir {
    pub const EGRESS: u8 = 0;
    pub const INGRESS: u8 = 1;
}

/// [`kind::TLS_HELLO`]: the first payload bytes of one of a socket's first segments in one
/// direction, captured only when they start a TLS handshake (22) or alert (21) record. Never
/// application data (content type 23): capture of a direction stops at the first segment that
/// does not start with one of those two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsHello {
    pub header: EventHeader,
    /// The socket's `SO_COOKIE`; with `birth_ns`, its connection's uid.
    pub cookie: u64,
    /// `ConnState::birth_ns`, or 0 when the socket is not tracked.
    pub birth_ns: u64,
    /// `ConnState::tuple` and `netns`, when tracked (`conn_flag::TUPLE_VALID` in `flags`).
    pub tuple: Endpoints,
    pub netns: u32,
    pub flags: u16,
    /// One of [`tls_dir`].
    pub direction: u8,
    /// Which of this direction's captured segments it is (0, 1).
    pub index: u8,
    /// Payload bytes of the segment (only the first [`TLS_CAPTURE_LEN`] are in `data`).
    pub seg_len: u32,
    pub captured: u32,
    pub data: [u8; TLS_CAPTURE_LEN],
}

/// `TlsHandshake::library`.
pub mod tls_lib {
    pub const OPENSSL: u8 = 1;
    pub const GNUTLS: u8 = 2;
}

/// `TlsHandshake::outcome`.
pub mod tls_outcome {
    /// The handshake call returned success.
    pub const ESTABLISHED: u8 = 1;
    /// It returned a fatal error.
    pub const FAILED: u8 = 2;
    /// The session was freed while its handshake was still pending.
    pub const ABANDONED: u8 = 3;
}

/// [`kind::TLS_HANDSHAKE`]: one TLS session's handshake, from its library's calls.
/// `header.ts_ns` is its end, `header.pid_tgid` the thread that made the last call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsHandshake {
    pub header: EventHeader,
    /// The library's session object (`SSL *`, `gnutls_session_t`) in the process.
    pub session: u64,
    /// The socket the handshake wrote to (joined by thread in `cgroup_skb` egress), or 0.
    pub cookie: u64,
    /// Entry of the first handshake call.
    pub start_ns: u64,
    /// Handshake calls made (non-blocking sockets make several).
    pub calls: u32,
    /// Return value of the last call (`OpenSSL`: 1 success; `GnuTLS`: 0 success, else an error).
    pub ret: i32,
    /// One of [`tls_lib`] and [`tls_outcome`].
    pub library: u8,
    pub outcome: u8,
    /// Which library file the uprobe fired in: an index into userspace's list of attached
    /// files (the attach cookie's second byte).
    pub lib_file: u8,
    pub _pad: [u8; 5],
    pub comm: [u8; COMM_LEN],
}

/// State of a TLS session between its handshake calls (map value, kernel only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSession {
    pub start_ns: u64,
    pub cookie: u64,
    pub calls: u32,
    pub library: u8,
    /// Non-zero once reported: later handshake calls on an established session (which return
    /// at once) are not new handshakes.
    pub done: u8,
    /// `TlsHandshake::lib_file`.
    pub lib_file: u8,
    /// Non-zero once its ALPN protocol was reported.
    pub alpn_done: u8,
}

/// Attach cookies of the TLS uprobes: the low byte is what the probed function is, the second
/// byte which library file it is in (`TlsHandshake::lib_file`).
pub mod tls_op {
    /// `SSL_do_handshake` / `gnutls_handshake` entry (library in `TlsSession::library`).
    pub const HANDSHAKE_OPENSSL: u64 = 1;
    pub const HANDSHAKE_GNUTLS: u64 = 2;
    // 3, 4 (`SSL_connect`/`SSL_accept`: the role, which the wire tells) and 6
    // (`ERR_vset_error`: it also fires for the dozens of errors OpenSSL 3 raises and pops in
    // every successful handshake) were tried and dropped: each uprobe hit costs ~14 µs here.
    /// `SSL_free` / `gnutls_deinit` entry: a pending handshake is abandoned.
    pub const FREE: u64 = 5;
    /// `SSL_get0_alpn_selected(ssl, &data, &len)`, entry and return.
    pub const ALPN_OPENSSL: u64 = 7;
    /// `gnutls_alpn_get_selected_protocol(session, &datum)`, entry and return.
    pub const ALPN_GNUTLS: u64 = 8;
}

/// Bytes of an ALPN protocol id kept in [`TlsAlpn`] (ids are at most 255 bytes; the registered
/// ones are far shorter).
pub const TLS_ALPN_LEN: usize = 32;

/// [`kind::TLS_ALPN`]: the negotiated ALPN protocol, as the application asked its library for it
/// after the handshake (TLS 1.3 encrypts the server's choice, so the wire cannot tell). Sent once
/// per session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsAlpn {
    pub header: EventHeader,
    /// `TlsHandshake::session`: with the process, joins the handshake.
    pub session: u64,
    /// Length of the protocol id; only the first [`TLS_ALPN_LEN`] bytes are in `protocol`.
    pub len: u32,
    pub _pad: u32,
    pub protocol: [u8; TLS_ALPN_LEN],
}

/// Indexes of the per-CPU counter array `COUNTERS`.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Sockets not tracked because the `CONNS` map was full.
    pub const MAP_FULL: u32 = 1;
    /// Transitions that overwrote the last slot of a socket's `states`.
    pub const TRANSITIONS_TRUNCATED: u32 = 2;
    /// Events submitted to the ring buffer.
    pub const EVENTS: u32 = 3;
    /// Kernel memory reads (`bpf_probe_read_kernel`) that failed.
    pub const READ_FAILED: u32 = 4;
    /// TLS sessions not followed because the in-flight handshake map was full.
    pub const TLS_MAP_FULL: u32 = 5;
    /// Runs of observer's programs the kernel skipped because one was already running on that
    /// CPU (a softirq interrupting a hook, for instance): events lost that way. Not written by
    /// the programs: userspace reads the kernel's per-program statistics
    /// (`bpf_prog_info.recursion_misses`) into the same snapshot. For the first
    /// `inet_sock_set_state` program it counts only the skipped runs the second did not take
    /// over (`TAKEN_OVER`).
    pub const RECURSION_MISSES: u32 = 6;
    /// Transitions the second `inet_sock_set_state` program handled because the kernel had
    /// skipped the first one for them.
    pub const TAKEN_OVER: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// `Layout::reset_layout`.
pub mod reset_layout {
    /// `tcp_send_reset` has no address fields (not expected on any supported kernel).
    pub const NONE: u32 = 0;
    /// sport, dport, family, saddr[4], daddr[4], `saddr_v6`[16], `daddr_v6`[16] fields (≤ 6.9).
    pub const FIELDS: u32 = 1;
    /// saddr[28], daddr[28] `sockaddr` blobs (6.10+).
    pub const SOCKADDR: u32 = 2;
}

/// Offset of `ret` in `syscalls:sys_exit_*` records: after the 8 bytes of common fields and the
/// 4-byte `__syscall_nr` padded to 8. The accept hook reads it with a constant offset, the only
/// kind of context access that is a plain load rather than a probe read; userspace checks it
/// against tracefs at load time.
pub const SYS_EXIT_RET_OFFSET: u32 = 16;

/// A field of a tracepoint record: its offset, or `u32::MAX` when absent.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets resolved at load time: kernel struct fields from BTF, tracepoint record fields
/// from tracefs. Written into the global `LAYOUT` with `EbpfLoader::override_global`, so one
/// object runs on every kernel without CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    // struct sock_common / sock / inet_sock
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub inet_sport: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    /// `sock.sk_flags`, and the bit number of `SOCK_DONE` in it (`enum sock_flags`).
    pub sk_flags: u32,
    pub sock_done_bit: u32,
    /// `struct net` → `ns.inum`.
    pub net_ns_inum: u32,
    // struct tcp_sock
    pub tcp_bytes_received: u32,
    pub tcp_bytes_sent: u32,
    pub tcp_bytes_retrans: u32,
    pub tcp_segs_in: u32,
    pub tcp_segs_out: u32,
    pub tcp_data_segs_in: u32,
    pub tcp_data_segs_out: u32,
    pub tcp_srtt_us: u32,
    pub tcp_total_retrans: u32,
    // task → files → fdt → fd[] → file → socket → sk
    pub task_files: u32,
    /// `task_struct.pid` and `tgid`: the thread and process ids where
    /// `bpf_get_current_pid_tgid` is not offered (`cgroup_skb` before 6.10).
    pub task_pid: u32,
    pub task_tgid: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    // tracepoint records
    pub tp_retransmit_skaddr: u32,
    pub tp_retransmit_state: u32,
    /// `err` (newer kernels: the tracepoint also fires for failed attempts), or [`ABSENT`].
    pub tp_retransmit_err: u32,
    pub tp_synack_skaddr: u32,
    pub tp_synack_req: u32,
    pub tp_synack_sport: u32,
    pub tp_synack_dport: u32,
    pub tp_synack_family: u32,
    pub tp_synack_saddr: u32,
    pub tp_synack_daddr: u32,
    pub tp_synack_saddr_v6: u32,
    pub tp_synack_daddr_v6: u32,
    pub tp_send_reset_skaddr: u32,
    pub tp_send_reset_state: u32,
    /// `reason`, or [`ABSENT`] before 6.10.
    pub tp_send_reset_reason: u32,
    /// One of [`reset_layout`].
    pub tp_send_reset_layout: u32,
    /// With `SOCKADDR`: the saddr/daddr blobs. With `FIELDS`: unused (see below).
    pub tp_send_reset_saddr: u32,
    pub tp_send_reset_daddr: u32,
    /// With `FIELDS`: the classic tuple fields.
    pub tp_send_reset_sport: u32,
    pub tp_send_reset_dport: u32,
    pub tp_send_reset_family: u32,
    pub tp_send_reset_saddr4: u32,
    pub tp_send_reset_daddr4: u32,
    pub tp_send_reset_saddr6: u32,
    pub tp_send_reset_daddr6: u32,
    pub tp_receive_reset_skaddr: u32,
    pub skc_state: u32,
    /// `sock_common.skc_cookie`, for hooks that cannot call `bpf_get_socket_cookie`.
    pub skc_cookie: u32,
    /// `sched:sched_process_exec`'s `filename` (a `__data_loc`: offset and length of the string
    /// in the record).
    pub tp_exec_filename: u32,
    // task → mm → exe_file → f_path → dentry … → mount: the executed file's path
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_path_mnt: u32,
    pub file_path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    /// `struct mount` → its embedded `struct vfsmount mnt`.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
}

impl Layout {
    #[must_use]
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer.
        unsafe { core::mem::zeroed() }
    }
}

/// Run-time settings, written into the global `SETTINGS` at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Non-zero: emit a [`Transition`] per state change (`--transitions`).
    pub emit_transitions: u32,
    /// Wake userspace only once this many bytes wait in the ring; it also drains on a timer.
    pub wakeup_bytes: u32,
    /// `SLOTS` has `slot_mask + 1` entries, a power of two.
    pub slot_mask: u32,
    /// log2 of the number of slots.
    pub slot_bits: u32,
}

impl Settings {
    #[must_use]
    pub const fn zeroed() -> Self {
        Self {
            emit_transitions: 0,
            wakeup_bytes: 0,
            slot_mask: 0,
            slot_bits: 0,
        }
    }
}

const _: () = {
    assert!(size_of::<EventHeader>() == 24);
    assert!(size_of::<Endpoints>() == 40);
    assert!(size_of::<Owner>() == 32);
    assert!(size_of::<ConnState>() == 200);
    assert!(align_of::<ConnState>() == 8);
    assert!(size_of::<CloseInfo>() == 56);
    assert!(size_of::<ConnClosed>() == 288);
    assert!(size_of::<Transition>() == 96);
    assert!(size_of::<Reset>() == 80);
    assert!(size_of::<SynackRetransmit>() == 80);
    assert!(size_of::<ListenCounts>() == 16);
    assert!(size_of::<SynSourceKey>() == 24);
    assert!(size_of::<ProcessExec>() == 24 + EXEC_PATH_LEN + EXE_PATH_LEN + 8);
    assert!(size_of::<ProcessExit>() == 24);
    assert!(size_of::<TlsHello>() == 24 + 16 + 40 + 8 + 8 + TLS_CAPTURE_LEN);
    assert!(size_of::<TlsHandshake>() == 24 + 24 + 16 + 16);
    assert!(align_of::<TlsHandshake>() == 8);
    assert!(size_of::<TlsSession>() == 24);
    assert!(size_of::<TlsAlpn>() == 24 + 16 + TLS_ALPN_LEN);
    assert!(size_of::<Layout>() == 69 * 4);
    assert!(size_of::<Settings>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, made of integers, with explicit padding.
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::Layout {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::TlsSession {}
    unsafe impl aya::Pod for super::ListenCounts {}
    unsafe impl aya::Pod for super::SynSourceKey {}
}
