//! Builds the `Layout` global: kernel struct offsets from BTF and tracepoint record offsets from
//! tracefs, each checked for its size, so that one eBPF object runs on every kernel and a
//! mismatch is an error that names the field.

use std::path::Path;

use observer_common::{ABSENT, Layout, SYS_EXIT_RET_OFFSET, reset_layout};
use thiserror::Error;

use super::{
    btf::{Btf, BtfError},
    tracefs::{Format, TracefsError},
};

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "{strukt}.{member} is {found} bits, observer expects {expected} (please report this kernel)"
    )]
    Size {
        strukt: &'static str,
        member: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// What the layout chose where kernels differ, for `observer check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choices {
    /// `tcp_send_reset` carries the kernel's RST reason (6.10+).
    pub rst_reason: bool,
    /// `tcp_send_reset` stores endpoints as sockaddr blobs (6.10+) rather than fields.
    pub rst_sockaddr: bool,
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    /// Offset of `strukt.path`, which must be exactly `bits` wide.
    fn at(&self, strukt: &'static str, path: &'static str, bits: u32) -> Result<u32, LayoutError> {
        let m = self.btf.member(strukt, path)?;
        if m.bits != bits || m.bit_shift != 0 {
            return Err(LayoutError::Size {
                strukt,
                member: path,
                found: m.bits,
                expected: bits,
            });
        }
        Ok(m.offset)
    }
}

/// Resolves every offset the eBPF programs read.
///
/// # Errors
/// When a struct, member or tracepoint field is missing or has an unexpected size.
pub fn resolve(btf: &Btf, tracefs: &Path) -> Result<(Layout, Choices), LayoutError> {
    let r = Resolver { btf };
    let mut l = Layout::zeroed();
    l.skc_daddr = r.at("sock", "__sk_common.skc_daddr", 32)?;
    l.skc_rcv_saddr = r.at("sock", "__sk_common.skc_rcv_saddr", 32)?;
    l.skc_dport = r.at("sock", "__sk_common.skc_dport", 16)?;
    l.skc_family = r.at("sock", "__sk_common.skc_family", 16)?;
    l.skc_state = r.at("sock", "__sk_common.skc_state", 8)?;
    l.skc_cookie = r.at("sock", "__sk_common.skc_cookie", 64)?;
    l.skc_net = r.at("sock", "__sk_common.skc_net", 64)?;
    l.skc_v6_daddr = r.at("sock", "__sk_common.skc_v6_daddr", 128)?;
    l.skc_v6_rcv_saddr = r.at("sock", "__sk_common.skc_v6_rcv_saddr", 128)?;
    l.inet_sport = r.at("inet_sock", "inet_sport", 16)?;
    l.sk_protocol = r.at("sock", "sk_protocol", 16)?;
    l.sk_err = r.at("sock", "sk_err", 32)?;
    l.sk_flags = r.at("sock", "__sk_common.skc_flags", 64)?;
    l.sock_done_bit = btf.enum_value("sock_flags", "SOCK_DONE")?;
    l.net_ns_inum = r.at("net", "ns.inum", 32)?;
    l.tcp_bytes_received = r.at("tcp_sock", "bytes_received", 64)?;
    l.tcp_bytes_sent = r.at("tcp_sock", "bytes_sent", 64)?;
    l.tcp_bytes_retrans = r.at("tcp_sock", "bytes_retrans", 64)?;
    l.tcp_segs_in = r.at("tcp_sock", "segs_in", 32)?;
    l.tcp_segs_out = r.at("tcp_sock", "segs_out", 32)?;
    l.tcp_data_segs_in = r.at("tcp_sock", "data_segs_in", 32)?;
    l.tcp_data_segs_out = r.at("tcp_sock", "data_segs_out", 32)?;
    l.tcp_srtt_us = r.at("tcp_sock", "srtt_us", 32)?;
    l.tcp_total_retrans = r.at("tcp_sock", "total_retrans", 32)?;
    l.task_files = r.at("task_struct", "files", 64)?;
    l.task_pid = r.at("task_struct", "pid", 32)?;
    l.task_tgid = r.at("task_struct", "tgid", 32)?;
    l.files_fdt = r.at("files_struct", "fdt", 64)?;
    l.fdt_max_fds = r.at("fdtable", "max_fds", 32)?;
    l.fdt_fd = r.at("fdtable", "fd", 64)?;
    l.file_private_data = r.at("file", "private_data", 64)?;
    l.socket_sk = r.at("socket", "sk", 64)?;
    l.task_mm = r.at("task_struct", "mm", 64)?;
    l.mm_exe_file = r.at("mm_struct", "exe_file", 64)?;
    l.file_path_mnt = r.at("file", "f_path.mnt", 64)?;
    l.file_path_dentry = r.at("file", "f_path.dentry", 64)?;
    l.dentry_parent = r.at("dentry", "d_parent", 64)?;
    l.dentry_name = r.at("dentry", "d_name.name", 64)?;
    l.mount_mnt = btf.member("mount", "mnt")?.offset;
    l.mount_parent = r.at("mount", "mnt_parent", 64)?;
    l.mount_mountpoint = r.at("mount", "mnt_mountpoint", 64)?;
    l.vfsmount_root = r.at("vfsmount", "mnt_root", 64)?;
    let choices = tracepoints(&mut l, tracefs)?;
    Ok((l, choices))
}

fn tracepoints(l: &mut Layout, root: &Path) -> Result<Choices, LayoutError> {
    let f = Format::read(root, "tcp", "tcp_retransmit_skb")?;
    l.tp_retransmit_skaddr = f.offset("skaddr", 8)?;
    l.tp_retransmit_state = f.offset("state", 4)?;
    l.tp_retransmit_err = f.optional("err", 4)?.unwrap_or(ABSENT);

    let f = Format::read(root, "tcp", "tcp_retransmit_synack")?;
    l.tp_synack_skaddr = f.offset("skaddr", 8)?;
    l.tp_synack_req = f.offset("req", 8)?;
    l.tp_synack_sport = f.offset("sport", 2)?;
    l.tp_synack_dport = f.offset("dport", 2)?;
    l.tp_synack_family = f.offset("family", 2)?;
    l.tp_synack_saddr = f.offset("saddr", 4)?;
    l.tp_synack_daddr = f.offset("daddr", 4)?;
    l.tp_synack_saddr_v6 = f.offset("saddr_v6", 16)?;
    l.tp_synack_daddr_v6 = f.offset("daddr_v6", 16)?;

    let f = Format::read(root, "tcp", "tcp_send_reset")?;
    l.tp_send_reset_skaddr = f.offset("skaddr", 8)?;
    l.tp_send_reset_state = f.optional("state", 4)?.unwrap_or(ABSENT);
    l.tp_send_reset_reason = f.optional("reason", 4)?.unwrap_or(ABSENT);
    let fields = [
        &mut l.tp_send_reset_sport,
        &mut l.tp_send_reset_dport,
        &mut l.tp_send_reset_family,
        &mut l.tp_send_reset_saddr4,
        &mut l.tp_send_reset_daddr4,
        &mut l.tp_send_reset_saddr6,
        &mut l.tp_send_reset_daddr6,
    ];
    let sockaddr = f.fields.get("saddr").is_some_and(|s| s.size == 28);
    if sockaddr {
        l.tp_send_reset_layout = reset_layout::SOCKADDR;
        l.tp_send_reset_saddr = f.offset("saddr", 28)?;
        l.tp_send_reset_daddr = f.offset("daddr", 28)?;
        for slot in fields {
            *slot = ABSENT;
        }
    } else {
        l.tp_send_reset_layout = reset_layout::FIELDS;
        let spec = [
            ("sport", 2),
            ("dport", 2),
            ("family", 2),
            ("saddr", 4),
            ("daddr", 4),
            ("saddr_v6", 16),
            ("daddr_v6", 16),
        ];
        for (slot, (name, size)) in fields.into_iter().zip(spec) {
            *slot = f.offset(name, size)?;
        }
        l.tp_send_reset_saddr = ABSENT;
        l.tp_send_reset_daddr = ABSENT;
    }
    let choices = Choices {
        rst_reason: l.tp_send_reset_reason != ABSENT,
        rst_sockaddr: sockaddr,
    };

    let f = Format::read(root, "tcp", "tcp_receive_reset")?;
    l.tp_receive_reset_skaddr = f.offset("skaddr", 8)?;

    l.tp_exec_filename =
        Format::read(root, "sched", "sched_process_exec")?.offset("filename", 4)?;

    let accept4 = Format::read(root, "syscalls", "sys_exit_accept4")?.offset("ret", 8)?;
    let accept = Format::read(root, "syscalls", "sys_exit_accept")?.offset("ret", 8)?;
    for (name, offset) in [("sys_exit_accept4", accept4), ("sys_exit_accept", accept)] {
        if offset != SYS_EXIT_RET_OFFSET {
            return Err(LayoutError::Unsupported(format!(
                "syscalls:{name} has `ret` at offset {offset}; this build reads it at {SYS_EXIT_RET_OFFSET} (please report this kernel)"
            )));
        }
    }
    Ok(choices)
}
