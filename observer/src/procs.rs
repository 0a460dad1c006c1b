//! Who owns a connection: the processes holding a socket, their executable, cgroup and
//! container. Pure reads of /proc and /sys, nothing else.
//!
//! Why: the probes record a pid and a cgroup id at the moment of a hook; sockets that existed
//! before observer started have neither, and neither says which program or container it was.
//! Everything here is best effort because processes exit while they are read: a vanished
//! file means "gone", never an error, and a pid may have been reused since the kernel saw it,
//! which [`ProcessInfo::start_time`] detects.
//!
//! Cost (release build, 6.18): [`read`] is 4 small /proc reads, about 50 µs.
//! [`socket_owners`] is one `readlink` per open descriptor of every process, about 2 µs each
//! (2 ms for 80 processes and 375 descriptors, 33 ms for 18000): call it at startup or on a
//! miss, not per connection. [`CgroupIndex`] walks the cgroup2 tree, one `readdir` per cgroup,
//! at most once per second.

mod cgroup;

use std::{collections::HashMap, fs, io, os::unix::ffi::OsStrExt as _, path::PathBuf};

use thiserror::Error;

pub use cgroup::{CgroupIndex, container_id};

#[derive(Debug, Error)]
pub enum ProcsError {
    #[error(
        "no cgroup2 file system is mounted (none in /proc/self/mounts): mount one with `mount -t cgroup2 none /sys/fs/cgroup` (or /sys/fs/cgroup/unified on a hybrid host)"
    )]
    NoCgroup2,
    #[error("cannot read {path}: {err} (is /proc mounted?)")]
    Read { path: PathBuf, err: io::Error },
}

/// What observer reports about a connection's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The executable's path; `None` for kernel threads or when not permitted. A replaced or
    /// deleted binary keeps its old path (the kernel's " (deleted)" suffix is removed).
    pub executable: Option<String>,
    /// The cgroup v2 path (the `0::` line of /proc/PID/cgroup), relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// The 64-hex container id, when the cgroup is a container's ([`container_id`]).
    pub container_id: Option<String>,
    /// Clock ticks since boot when the process started (field 22 of /proc/PID/stat): the same
    /// pid with another start time is another process.
    pub start_time: u64,
}

/// Reads what /proc says about `pid`; `None` when the process is gone (or was replaced by
/// another with the same pid while being read).
#[must_use]
pub fn read(pid: u32) -> Option<ProcessInfo> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let stat_start = || start_time(&fs::read_to_string(dir.join("stat")).ok()?);
    let start_time = stat_start()?;
    let executable = fs::read_link(dir.join("exe")).ok().map(|path| {
        let path = path.to_string_lossy();
        path.strip_suffix(" (deleted)").unwrap_or(&path).to_owned()
    });
    let cgroup = fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|text| cgroup_v2(&text));
    let container_id = cgroup.as_deref().and_then(container_id);
    // Read the pid's identity again: the answers above belong to it only if it is unchanged.
    (stat_start() == Some(start_time)).then_some(ProcessInfo {
        pid,
        executable,
        cgroup,
        container_id,
        start_time,
    })
}

/// Field 22 of /proc/PID/stat. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The cgroup v2 path in the text of /proc/PID/cgroup.
fn cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Every socket inode held open by a process, with the pids holding it, ascending.
///
/// A socket often has several holders: `fork` duplicates descriptors, so a server's listener
/// is held by the parent and each worker, and an accepted connection by the parent until it
/// closes its copy. Threads share their process's descriptors and are not listed separately.
/// Processes that exit during the scan, or whose descriptors cannot be read, are skipped.
#[must_use]
pub fn socket_owners() -> HashMap<u64, Vec<u32>> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = socket_inode(target.as_os_str().as_bytes())
            {
                owners.entry(inode).or_default().push(pid);
            }
        }
    }
    for holders in owners.values_mut() {
        holders.sort_unstable();
        holders.dedup();
    }
    owners
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Numeric entries of /proc, ascending.
pub(crate) fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::{fd::AsRawFd, unix::fs::MetadataExt as _},
        process::Command,
    };

    use super::*;

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id()).expect("this process exists");
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(me.executable.as_deref(), exe.to_str());
        let own_cgroup = cgroup_v2(&fs::read_to_string("/proc/self/cgroup").expect("cgroup"));
        assert_eq!(me.cgroup, own_cgroup);
        assert!(me.start_time > 0);
        assert_eq!(
            read(std::process::id()).map(|p| p.start_time),
            Some(me.start_time)
        );
        assert_eq!(read(u32::MAX), None, "no such process");
    }

    #[test]
    fn parses_stat_and_cgroup_text() {
        let stat = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(start_time(stat), Some(987_654));
        assert_eq!(start_time("4242 (cut) S 1 2"), None);
        assert_eq!(start_time(""), None);
        let cgroup = "12:pids:/x\n0::/system.slice/nginx.service\n";
        assert_eq!(
            cgroup_v2(cgroup).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_v2("1:cpu:/\n"), None);
        assert_eq!(socket_inode(b"socket:[123]"), Some(123));
        for other in [
            &b"pipe:[123]"[..],
            b"socket:[]",
            b"socket:[12",
            b"/dev/null",
        ] {
            assert_eq!(socket_inode(other), None);
        }
    }

    #[test]
    fn finds_the_holders_of_a_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("fd")
            .ino();

        // A socket without close-on-exec is inherited by a child: two holders.
        // SAFETY: plain socket(2); checked below.
        let shared = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(shared >= 0);
        let shared_inode = fs::metadata(format!("/proc/self/fd/{shared}"))
            .expect("fd")
            .ino();
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let owners = socket_owners();
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(shared) };
        let _ = child.kill();
        let _ = child.wait();
        let me = std::process::id();
        assert!(owners.get(&inode).is_some_and(|pids| pids.contains(&me)));
        let holders = owners.get(&shared_inode).expect("shared socket");
        assert!(
            holders.contains(&me) && holders.contains(&child.id()),
            "{holders:?}"
        );
        assert!(holders.is_sorted());
    }
}
