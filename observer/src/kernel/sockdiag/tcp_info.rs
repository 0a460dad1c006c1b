//! `struct tcp_info` (`include/uapi/linux/tcp.h`) from an `INET_DIAG_INFO` attribute.
//!
//! Parsed by its documented byte offsets rather than copied into a `#[repr(C)]` struct: the
//! struct grows every few releases (232 bytes on 6.1, 280 on 6.18), and a kernel sends only the
//! part it knows. A field beyond the received length reads as 0 when the field predates
//! observer's minimum kernel (5.8; only a damaged reply is that short), and as `None` when it
//! is newer, so "absent" and "zero" stay distinct where it matters.

/// Counters and estimates of one TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// Bytes of `struct tcp_info` the kernel sent.
    pub len: usize,
    /// Congestion-control state: 0 open, 1 disorder, 2 CWR, 3 recovery, 4 loss.
    pub ca_state: u8,
    /// Consecutive retransmission timeouts of the current segment.
    pub retransmits: u8,
    pub rto_us: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    /// Segments in flight, not yet acknowledged.
    pub unacked: u32,
    pub lost: u32,
    /// Retransmitted segments still in flight.
    pub retrans: u32,
    pub pmtu: u32,
    /// Smoothed round-trip time (`tcpi_rtt`).
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    /// Segments retransmitted over the whole life of the socket.
    pub total_retrans: u32,
    /// Bytes a second.
    pub pacing_rate: u64,
    /// Bytes a second.
    pub delivery_rate: u64,
    /// Sequence space the peer acknowledged, not data: the data, plus 1 for our SYN if we
    /// connected (a listener's SYN-ACK is not counted), plus 1 for our FIN once acknowledged.
    /// So a client that sent N bytes shows N + 1 (measured on 6.18, see the tests).
    pub bytes_acked: u64,
    /// Sequence space received in order: the data, plus 1 for the peer's FIN (never its SYN).
    pub bytes_received: u64,
    /// Data bytes sent, retransmissions included.
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    /// Segments sent, pure ACKs and SYN/FIN included.
    pub segs_out: u32,
    pub segs_in: u32,
    /// Segments carrying data.
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// Bytes written by the application but not sent yet.
    pub notsent_bytes: u32,
    pub busy_time_us: u64,
    pub rwnd_limited_us: u64,
    pub sndbuf_limited_us: u64,
    pub delivered: u32,
    pub delivered_ce: u32,
    pub dsack_dups: u32,
    pub reord_seen: u32,
    pub rcv_ooopack: u32,
    /// The peer's advertised window, scaled.
    pub snd_wnd: u32,
    /// Our advertised window, scaled (Linux 6.2).
    pub rcv_wnd: Option<u32>,
    /// Path rehash attempts (Linux 6.2).
    pub rehash: Option<u32>,
    /// Retransmission timeouts, SYN and SYN-ACK included (Linux 6.7).
    pub total_rto: Option<u16>,
    /// Recoveries that started with a timeout (Linux 6.7).
    pub total_rto_recoveries: Option<u16>,
    /// Milliseconds spent in timeout recoveries (Linux 6.7).
    pub total_rto_time_ms: Option<u32>,
}

/// Byte offsets in `struct tcp_info`; checked against the running kernel's BTF in the tests.
pub(super) mod offset {
    pub const CA_STATE: usize = 1;
    pub const RETRANSMITS: usize = 2;
    pub const RTO: usize = 8;
    pub const SND_MSS: usize = 16;
    pub const RCV_MSS: usize = 20;
    pub const UNACKED: usize = 24;
    pub const LOST: usize = 32;
    pub const RETRANS: usize = 36;
    pub const PMTU: usize = 60;
    pub const RTT: usize = 68;
    pub const RTTVAR: usize = 72;
    pub const SND_CWND: usize = 80;
    pub const TOTAL_RETRANS: usize = 100;
    pub const PACING_RATE: usize = 104;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
    pub const SEGS_OUT: usize = 136;
    pub const SEGS_IN: usize = 140;
    pub const NOTSENT_BYTES: usize = 144;
    pub const MIN_RTT: usize = 148;
    pub const DATA_SEGS_IN: usize = 152;
    pub const DATA_SEGS_OUT: usize = 156;
    pub const DELIVERY_RATE: usize = 160;
    pub const BUSY_TIME: usize = 168;
    pub const RWND_LIMITED: usize = 176;
    pub const SNDBUF_LIMITED: usize = 184;
    pub const DELIVERED: usize = 192;
    pub const DELIVERED_CE: usize = 196;
    pub const BYTES_SENT: usize = 200;
    pub const BYTES_RETRANS: usize = 208;
    pub const DSACK_DUPS: usize = 216;
    pub const REORD_SEEN: usize = 220;
    pub const RCV_OOOPACK: usize = 224;
    pub const SND_WND: usize = 228;
    pub const RCV_WND: usize = 232;
    pub const REHASH: usize = 236;
    pub const TOTAL_RTO: usize = 240;
    pub const TOTAL_RTO_RECOVERIES: usize = 242;
    pub const TOTAL_RTO_TIME: usize = 244;
}

/// Parses the body of an `INET_DIAG_INFO` attribute; never fails (see the module doc).
pub(super) fn parse(b: &[u8]) -> TcpInfo {
    use offset as o;
    let u8_ = |at: usize| b.get(at).copied().unwrap_or(0);
    let u16_ = |at: usize| Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_ = |at: usize| Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_ = |at: usize| {
        b.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let old = |at: usize| u32_(at).unwrap_or(0);
    TcpInfo {
        len: b.len(),
        ca_state: u8_(o::CA_STATE),
        retransmits: u8_(o::RETRANSMITS),
        rto_us: old(o::RTO),
        snd_mss: old(o::SND_MSS),
        rcv_mss: old(o::RCV_MSS),
        unacked: old(o::UNACKED),
        lost: old(o::LOST),
        retrans: old(o::RETRANS),
        pmtu: old(o::PMTU),
        rtt_us: old(o::RTT),
        rttvar_us: old(o::RTTVAR),
        min_rtt_us: old(o::MIN_RTT),
        snd_cwnd: old(o::SND_CWND),
        total_retrans: old(o::TOTAL_RETRANS),
        pacing_rate: u64_(o::PACING_RATE),
        delivery_rate: u64_(o::DELIVERY_RATE),
        bytes_acked: u64_(o::BYTES_ACKED),
        bytes_received: u64_(o::BYTES_RECEIVED),
        bytes_sent: u64_(o::BYTES_SENT),
        bytes_retrans: u64_(o::BYTES_RETRANS),
        segs_out: old(o::SEGS_OUT),
        segs_in: old(o::SEGS_IN),
        data_segs_in: old(o::DATA_SEGS_IN),
        data_segs_out: old(o::DATA_SEGS_OUT),
        notsent_bytes: old(o::NOTSENT_BYTES),
        busy_time_us: u64_(o::BUSY_TIME),
        rwnd_limited_us: u64_(o::RWND_LIMITED),
        sndbuf_limited_us: u64_(o::SNDBUF_LIMITED),
        delivered: old(o::DELIVERED),
        delivered_ce: old(o::DELIVERED_CE),
        dsack_dups: old(o::DSACK_DUPS),
        reord_seen: old(o::REORD_SEEN),
        rcv_ooopack: old(o::RCV_OOOPACK),
        snd_wnd: old(o::SND_WND),
        rcv_wnd: u32_(o::RCV_WND),
        rehash: u32_(o::REHASH),
        total_rto: u16_(o::TOTAL_RTO),
        total_rto_recoveries: u16_(o::TOTAL_RTO_RECOVERIES),
        total_rto_time_ms: u32_(o::TOTAL_RTO_TIME),
    }
}

#[cfg(test)]
mod tests {
    use super::{offset as o, parse};
    use crate::kernel::btf::Btf;

    /// (BTF member name, our offset, size in bytes).
    const FIELDS: &[(&str, usize, u32)] = &[
        ("tcpi_ca_state", o::CA_STATE, 1),
        ("tcpi_retransmits", o::RETRANSMITS, 1),
        ("tcpi_rto", o::RTO, 4),
        ("tcpi_snd_mss", o::SND_MSS, 4),
        ("tcpi_rcv_mss", o::RCV_MSS, 4),
        ("tcpi_unacked", o::UNACKED, 4),
        ("tcpi_lost", o::LOST, 4),
        ("tcpi_retrans", o::RETRANS, 4),
        ("tcpi_pmtu", o::PMTU, 4),
        ("tcpi_rtt", o::RTT, 4),
        ("tcpi_rttvar", o::RTTVAR, 4),
        ("tcpi_snd_cwnd", o::SND_CWND, 4),
        ("tcpi_total_retrans", o::TOTAL_RETRANS, 4),
        ("tcpi_pacing_rate", o::PACING_RATE, 8),
        ("tcpi_bytes_acked", o::BYTES_ACKED, 8),
        ("tcpi_bytes_received", o::BYTES_RECEIVED, 8),
        ("tcpi_segs_out", o::SEGS_OUT, 4),
        ("tcpi_segs_in", o::SEGS_IN, 4),
        ("tcpi_notsent_bytes", o::NOTSENT_BYTES, 4),
        ("tcpi_min_rtt", o::MIN_RTT, 4),
        ("tcpi_data_segs_in", o::DATA_SEGS_IN, 4),
        ("tcpi_data_segs_out", o::DATA_SEGS_OUT, 4),
        ("tcpi_delivery_rate", o::DELIVERY_RATE, 8),
        ("tcpi_busy_time", o::BUSY_TIME, 8),
        ("tcpi_rwnd_limited", o::RWND_LIMITED, 8),
        ("tcpi_sndbuf_limited", o::SNDBUF_LIMITED, 8),
        ("tcpi_delivered", o::DELIVERED, 4),
        ("tcpi_delivered_ce", o::DELIVERED_CE, 4),
        ("tcpi_bytes_sent", o::BYTES_SENT, 8),
        ("tcpi_bytes_retrans", o::BYTES_RETRANS, 8),
        ("tcpi_dsack_dups", o::DSACK_DUPS, 4),
        ("tcpi_reord_seen", o::REORD_SEEN, 4),
        ("tcpi_rcv_ooopack", o::RCV_OOOPACK, 4),
        ("tcpi_snd_wnd", o::SND_WND, 4),
        ("tcpi_rcv_wnd", o::RCV_WND, 4),
        ("tcpi_rehash", o::REHASH, 4),
        ("tcpi_total_rto", o::TOTAL_RTO, 2),
        ("tcpi_total_rto_recoveries", o::TOTAL_RTO_RECOVERIES, 2),
        ("tcpi_total_rto_time", o::TOTAL_RTO_TIME, 4),
    ];

    #[test]
    fn offsets_match_the_running_kernel() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF is readable");
        let btf = Btf::parse(&data).expect("vmlinux BTF parses");
        for &(name, offset, bytes) in FIELDS {
            let member = btf.member("tcp_info", name).expect(name);
            assert_eq!(
                (member.offset as usize, member.bytes()),
                (offset, bytes),
                "{name}"
            );
        }
    }

    #[test]
    fn short_structs_leave_newer_fields_absent() {
        let mut full = vec![0u8; 280];
        full[o::BYTES_ACKED..o::BYTES_ACKED + 8].copy_from_slice(&7u64.to_ne_bytes());
        full[o::SND_WND..o::SND_WND + 4].copy_from_slice(&9u32.to_ne_bytes());
        full[o::TOTAL_RTO..o::TOTAL_RTO + 2].copy_from_slice(&3u16.to_ne_bytes());
        let info = parse(&full);
        assert_eq!((info.bytes_acked, info.snd_wnd), (7, 9));
        assert_eq!((info.total_rto, info.rcv_wnd), (Some(3), Some(0)));

        // A 6.1 kernel stops after tcpi_snd_wnd.
        let info = parse(&full[..232]);
        assert_eq!((info.len, info.bytes_acked, info.snd_wnd), (232, 7, 9));
        assert_eq!(
            (info.rcv_wnd, info.total_rto, info.total_rto_time_ms),
            (None, None, None)
        );

        // Any prefix parses; fields past it are 0 or None.
        for len in 0..full.len() {
            let info = parse(&full[..len]);
            assert_eq!(info.len, len);
            if len < o::BYTES_ACKED + 8 {
                assert_eq!(info.bytes_acked, 0);
            }
        }
    }
}
