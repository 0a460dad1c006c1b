//! Reads the kernel's per-socket table (`SLOTS` and `CONNS`) in batches: one
//! `BPF_MAP_LOOKUP_BATCH` call per few thousand entries instead of two syscalls per entry,
//! so a table of 262,144 sockets is read in ~100 calls. aya has no batch lookup, hence the
//! raw syscall on the map's descriptor.

use std::{io, mem::size_of, os::fd::RawFd};

use observer_common::ConnState;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const BATCH: u32 = 4096;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every value of the map behind `fd` whose keys are `K`, appended to `out` when `keep` says so.
///
/// # Errors
/// The kernel refused the batch lookup (older than 5.6, or not a hash/array map).
pub fn read_all<K: Copy + Default>(
    fd: RawFd,
    keep: impl Fn(&ConnState) -> bool,
    out: &mut Vec<ConnState>,
) -> io::Result<()> {
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![ConnState::zeroed(); BATCH as usize];
    // The batch tokens are opaque to userspace; the kernel writes at most a key's size.
    let mut token = [0u64; 2];
    let mut next = [0u64; 2];
    let mut first = true;
    // A map of N entries takes at most N / BATCH + 1 calls (hash maps return up to a bucket's
    // worth less per call); this bound only guards against a kernel that never says ENOENT.
    for _ in 0..(1 << 24) / BATCH + 64 {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `BATCH` keys and values of the map's sizes, and
        // tokens of at least the key's size; the kernel writes no more than that.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let got = attr.count as usize;
        out.extend(
            values[..got.min(values.len())]
                .iter()
                .filter(|v| keep(v))
                .copied(),
        );
        match err {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token = next;
        first = false;
        debug_assert!(size_of::<K>() <= size_of::<[u64; 2]>());
    }
    Err(io::Error::other(
        "the batch lookup did not reach the end of the map",
    ))
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Byte offset of `recursion_misses` in `struct bpf_prog_info` (Linux 5.12+).
const RECURSION_MISSES_OFFSET: usize = 208;
/// `sizeof(struct bpf_prog_info)` as of 6.x; the kernel fills what it knows.
const PROG_INFO_LEN: u32 = 232;

/// `union bpf_attr`, the `info` member.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs of the program behind `fd` the kernel skipped because it was already running on the
/// CPU (`bpf_prog_info.recursion_misses`); `None` if the kernel says nothing. aya does not
/// expose this field, hence the raw call (one per program per second).
#[must_use]
pub fn recursion_misses(fd: RawFd) -> Option<u64> {
    #[repr(C, align(8))]
    struct Info([u8; PROG_INFO_LEN as usize]);
    let mut info = Info([0; PROG_INFO_LEN as usize]);
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: PROG_INFO_LEN,
        info: info.0.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is PROG_INFO_LEN writable bytes; the kernel writes at most `info_len`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 || (attr.info_len as usize) < RECURSION_MISSES_OFFSET + 8 {
        return None;
    }
    let bytes = info.0[RECURSION_MISSES_OFFSET..RECURSION_MISSES_OFFSET + 8]
        .try_into()
        .ok()?;
    Some(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::Btf;

    #[test]
    fn prog_info_offsets_match_this_kernel() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF is readable");
        let btf = Btf::parse(&data).expect("BTF parses");
        let m = btf
            .member("bpf_prog_info", "recursion_misses")
            .expect("bpf_prog_info.recursion_misses");
        assert_eq!((m.offset as usize, m.bits), (RECURSION_MISSES_OFFSET, 64));
    }
}
