//! Facts about the running kernel that userspace needs: BTF offsets, tracepoint layouts,
//! clocks, and identities. Nothing here touches aya.

pub mod btf;
pub mod layout;
pub mod sockdiag;
pub mod tracefs;

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// `/proc/sys/kernel/random/boot_id` as 16 bytes; zero when unreadable.
#[must_use]
pub fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).unwrap_or("00");
        *byte = u8::from_str_radix(digits, 16).unwrap_or(0);
    }
    id
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// `CLOCK_BOOTTIME` now, the clock of every kernel timestamp.
#[must_use]
pub fn boottime_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Unix time minus boot time, in nanoseconds: add it to a kernel timestamp to get wall time.
/// Takes the tightest of a few samples.
#[must_use]
pub fn boot_to_unix_offset_ns() -> i64 {
    (0..5)
        .map(|_| {
            let before = clock_ns(libc::CLOCK_BOOTTIME);
            let wall = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_BOOTTIME);
            (after - before, wall - i128::midpoint(before, after))
        })
        .min_by_key(|&(gap, _)| gap)
        .and_then(|(_, offset)| i64::try_from(offset).ok())
        .unwrap_or(0)
}

/// Inode number of a network namespace file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
///
/// # Errors
/// When the path cannot be read or is not a network namespace.
pub fn netns_inode(path: &Path) -> anyhow::Result<u32> {
    use anyhow::Context as _;
    let meta = std::fs::metadata(path).with_context(|| {
        format!("cannot open network namespace {}: give a path such as /run/netns/NAME or /proc/PID/ns/net", path.display())
    })?;
    let nsfs = std::fs::metadata("/proc/self/ns/net").context("cannot read /proc/self/ns/net")?;
    if meta.dev() != nsfs.dev() {
        anyhow::bail!(
            "{} is not a namespace file: give a path such as /run/netns/NAME or /proc/PID/ns/net",
            path.display()
        );
    }
    // nsfs inodes are 32-bit (`ns_common.inum`).
    u32::try_from(meta.ino())
        .with_context(|| format!("{} is not a network namespace file", path.display()))
}

/// The host's name, for `host.name`.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// The kernel release, e.g. `6.18.44`.
#[must_use]
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
