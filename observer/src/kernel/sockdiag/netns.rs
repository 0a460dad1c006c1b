//! Network namespaces: finding them all, and dumping sockets inside each.
//!
//! A dump only sees the namespace its netlink socket was created in, so each namespace gets a
//! short-lived thread that `setns`es into it and dies afterwards: the calling thread never
//! changes namespace, so nothing else in the process can be surprised by it.

use std::{
    collections::HashSet,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use super::{SockDiagError, TcpSocket, dump_tcp, dump_tcp_states};

/// A network namespace and one path that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    /// The nsfs inode: what `ip netns identify`, `lsns` and the probes' `net.ns.inum` show.
    pub inode: u32,
    pub path: PathBuf,
}

/// Runs `f` on a fresh thread inside the network namespace at `ns` (a path such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`) and returns its result. A panic in `f` is
/// propagated.
///
/// # Errors
/// When `ns` cannot be opened or entered (needs `CAP_SYS_ADMIN`), or no thread can start.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, SockDiagError> {
    let file = fs::File::open(ns).map_err(|err| SockDiagError::OpenNamespace {
        path: ns.to_owned(),
        err,
    })?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("observer-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: a valid descriptor; setns changes only this thread, which ends
                // when `f` returns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(SockDiagError::EnterNamespace {
                        path: ns.to_owned(),
                        err: std::io::Error::last_os_error(),
                    });
                }
                drop(file);
                Ok(f())
            })
            .map_err(|err| SockDiagError::Thread {
                path: ns.to_owned(),
                err,
            })?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Every distinct network namespace this process can open: its own (`/proc/self/ns/net`),
/// the named ones (`/run/netns/*`, which may have no process at all), and those of every
/// process (`/proc/PID/ns/net`, lowest pid first: usually the longest-lived holder).
///
/// Skips whatever vanishes or cannot be read during the scan. Not found: namespaces held only
/// by a thread that `setns`ed away from its process, by an open descriptor, or by a socket.
#[must_use]
pub fn namespaces() -> Vec<NetNs> {
    let own = PathBuf::from("/proc/self/ns/net");
    let Ok(nsfs_dev) = fs::metadata(&own).map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut add = |path: PathBuf| {
        // A file left in /run/netns after a crash is not on nsfs: skip it.
        if let Ok(meta) = fs::metadata(&path)
            && meta.dev() == nsfs_dev
            && let Ok(inode) = u32::try_from(meta.ino())
            && seen.insert(inode)
        {
            found.push(NetNs { inode, path });
        }
    };
    add(own);
    if let Ok(dir) = fs::read_dir("/run/netns") {
        let mut named: Vec<PathBuf> = dir.flatten().map(|entry| entry.path()).collect();
        named.sort();
        named.into_iter().for_each(&mut add);
    }
    for pid in crate::procs::pids() {
        add(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    found
}

/// TCP sockets of every network namespace, each with its namespace's inode. A namespace that
/// cannot be dumped (its last process exited, say) becomes a warning, not an error.
#[must_use]
pub fn dump_all() -> (Vec<(u32, TcpSocket)>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut warnings = Vec::new();
    let namespaces = namespaces();
    if namespaces.is_empty() {
        warnings.push(
            "cannot stat /proc/self/ns/net, so no network namespace was dumped: is /proc mounted?"
                .to_owned(),
        );
    }
    // The calling thread's own namespace needs no extra thread.
    let here = fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok());
    for ns in namespaces {
        let dumped = if Some(ns.inode) == here {
            dump_tcp()
        } else {
            in_netns(&ns.path, dump_tcp).and_then(|dumped| dumped)
        };
        match dumped {
            Ok(list) => sockets.extend(list.into_iter().map(|socket| (ns.inode, socket))),
            Err(err) => warnings.push(format!(
                "network namespace {} ({}) skipped: {err}",
                ns.inode,
                ns.path.display()
            )),
        }
    }
    (sockets, warnings)
}

/// One namespace's time-wait sockets and its ephemeral port range.
#[derive(Debug)]
pub struct TimeWaitDump {
    pub inode: u32,
    pub sockets: Vec<TcpSocket>,
    /// `net.ipv4.ip_local_port_range` as the namespace has it; `None` if unreadable.
    pub port_range: Option<(u16, u16)>,
}

/// The time-wait sockets and the ephemeral port range of every network namespace (or of the
/// one whose inode is `only`), with warnings for those skipped.
#[must_use]
pub fn time_wait_all(only: Option<u32>) -> (Vec<TimeWaitDump>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let here = fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok());
    let dump = || {
        let mask = 1u32 << observer_common::tcp_state::TIME_WAIT;
        // sysctls under /proc/sys/net are those of the reader's namespace.
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text.split_whitespace().map(str::parse::<u16>);
                Some((it.next()?.ok()?, it.next()?.ok()?))
            });
        dump_tcp_states(mask).map(|sockets| (sockets, range))
    };
    for ns in namespaces() {
        if only.is_some_and(|inode| inode != ns.inode) {
            continue;
        }
        let dumped = if Some(ns.inode) == here {
            dump()
        } else {
            in_netns(&ns.path, dump).and_then(|dumped| dumped)
        };
        match dumped {
            Ok((sockets, port_range)) => out.push(TimeWaitDump {
                inode: ns.inode,
                sockets,
                port_range,
            }),
            Err(err) => warnings.push(format!(
                "network namespace {} ({}) skipped: {err}",
                ns.inode,
                ns.path.display()
            )),
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        net::TcpListener,
        os::unix::fs::MetadataExt as _,
        path::Path,
        process::{Child, Command, Stdio},
        time::Instant,
    };

    use observer_common::tcp_state;

    use super::*;
    use crate::{kernel::netns_inode, procs::CgroupIndex};

    #[test]
    fn in_netns_runs_inside_and_names_bad_paths() {
        let own = netns_inode(Path::new("/proc/self/ns/net")).expect("own netns");
        let inside = in_netns(Path::new("/proc/self/ns/net"), || {
            netns_inode(Path::new("/proc/thread-self/ns/net")).expect("thread netns")
        });
        assert_eq!(inside.expect("entered"), own);
        let err = in_netns(Path::new("/nonexistent/ns"), || ()).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot open network namespace /nonexistent/ns"),
            "{text}"
        );
        let err = in_netns(Path::new("/proc/self/stat"), || ()).expect_err("not a namespace");
        assert!(matches!(err, SockDiagError::EnterNamespace { .. }), "{err}");
    }

    /// A named network namespace, removed on drop (after the process holding sockets in it).
    struct PrivateNetns {
        name: String,
        child: Option<Child>,
    }

    impl Drop for PrivateNetns {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// A cgroup, removed on drop.
    struct Cgroup(PathBuf);

    impl Drop for Cgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    /// Holds a listener and an established pair, prints their `SO_COOKIE`s (57 on Linux).
    const HOLDER: &str = r#"
import socket, struct, sys
def cookie(s): return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
print(cookie(l), cookie(c), cookie(a), flush=True)
sys.stdin.read()
"#;

    fn ip(args: &[&str]) {
        let status = Command::new("ip")
            .args(args)
            .status()
            .expect("iproute2 is installed");
        assert!(status.success(), "ip {args:?} failed: the test needs root");
    }

    #[test]
    fn dump_all_attributes_sockets_to_their_namespace_and_cgroup() {
        let name = format!("observer-sockdiag-{}", std::process::id());
        let cgroups = CgroupIndex::new().expect("a cgroup2 mount");
        let cgroup = Cgroup(cgroups.root().join(&name));
        fs::create_dir(&cgroup.0).expect("mkdir a cgroup (needs root)");
        let cgroup_id = fs::metadata(&cgroup.0).expect("cgroup").ino();
        let mut ns = PrivateNetns {
            name: name.clone(),
            child: None,
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // Joins the cgroup, then the namespace, then creates the sockets.
        let script = r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" python3 -c "$3""#;
        let procs = cgroup.0.to_str().expect("utf-8 path");
        let child = ns.child.insert(
            Command::new("sh")
                .args(["-c", script, "sh", procs, &name, HOLDER])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn python3"),
        );
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("cookies");
        let inside: Vec<u64> = line
            .split_whitespace()
            .map(|c| c.parse().expect("cookie"))
            .collect();
        assert_eq!(inside.len(), 3, "python printed {line:?}");
        let ns_inode = netns_inode(&Path::new("/run/netns").join(&name)).expect("ns");
        let own = netns_inode(Path::new("/proc/self/ns/net")).expect("own");
        let host = TcpListener::bind("127.0.0.1:0").expect("bind");

        let found = namespaces();
        assert!(
            found
                .iter()
                .any(|n| n.inode == ns_inode && n.path.starts_with("/run/netns"))
        );
        let started = Instant::now();
        let (sockets, warnings) = dump_all();
        eprintln!(
            "dump_all: {} sockets in {} namespaces in {:?}; warnings {warnings:?}",
            sockets.len(),
            found.len(),
            started.elapsed()
        );
        let in_dump = |cookie: u64| -> Vec<(u32, &TcpSocket)> {
            sockets
                .iter()
                .filter(|(_, s)| s.cookie == cookie)
                .map(|(n, s)| (*n, s))
                .collect()
        };
        let expected_states = [
            tcp_state::LISTEN,
            tcp_state::ESTABLISHED,
            tcp_state::ESTABLISHED,
        ];
        for (cookie, state) in inside.iter().zip(expected_states) {
            let [(netns, socket)] = in_dump(*cookie)[..] else {
                panic!("cookie {cookie} is not in the dump exactly once");
            };
            assert_eq!(
                netns, ns_inode,
                "cookie {cookie} is in the private namespace"
            );
            assert_eq!(socket.state, state);
            assert_eq!(socket.cgroup_id, Some(cgroup_id));
        }
        let host_cookie = super::super::tests::so_cookie(&host);
        let [(netns, _)] = in_dump(host_cookie)[..] else {
            panic!("the host socket is not in the dump exactly once");
        };
        assert_eq!(netns, own, "a host socket belongs to the host");
        let mut cgroups = cgroups;
        assert_eq!(cgroups.lookup(cgroup_id), Some(format!("/{name}")));
    }
}
