//! Who the owners are: each process's executable (from its exec event, or from /proc) and the
//! path of each cgroup id, so that a record names the program and container even when the
//! process exited before its socket's record was written.
//!
//! A pid is reused once its process exits; an exit marks the entry, and the next exec or
//! /proc fact for that pid replaces it. Exited entries are forgotten after [`KEEP_EXITED_NS`]:
//! by then every record of their sockets has been written.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use observer_common::{EXEC_PATH_LEN, ProcessExec};

use crate::facts::ProcessFact;

/// How long an exited process is remembered.
const KEEP_EXITED_NS: u64 = 60_000_000_000;

#[derive(Debug, Clone, Default)]
pub struct ProcEntry {
    pub executable: Option<Arc<str>>,
    /// When its exit was seen; 0 while it runs.
    pub exited_ns: u64,
}

#[derive(Debug, Default)]
pub struct Procs {
    by_pid: HashMap<u32, ProcEntry>,
    exits: VecDeque<(u64, u32)>,
    cgroups: HashMap<u64, Cgroup>,
}

/// A cgroup's path and the container id in it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: Arc<str>,
    pub container_id: Option<Arc<str>>,
}

impl Procs {
    pub fn exec(&mut self, e: &ProcessExec) {
        let pid = (e.header.pid_tgid >> 32) as u32;
        let len = e
            .filename
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(EXEC_PATH_LEN);
        let name = std::str::from_utf8(&e.filename[..len]).ok();
        // The kernel's walk of the file, links resolved; else the name as executed, unless
        // relative ("./server" says nothing without the caller's directory): /proc will tell
        // (`ProcessFact`).
        let executable = exe_path(e).or_else(|| name.filter(|n| n.starts_with('/')).map(Arc::from));
        self.by_pid.insert(
            pid,
            ProcEntry {
                executable,
                exited_ns: 0,
            },
        );
    }

    pub fn exit(&mut self, pid: u32, ts_ns: u64) {
        if let Some(entry) = self.by_pid.get_mut(&pid) {
            entry.exited_ns = ts_ns;
            self.exits.push_back((ts_ns, pid));
        }
    }

    pub fn fact(&mut self, f: &ProcessFact) {
        let entry = self.by_pid.entry(f.pid).or_default();
        if f.executable.is_some() || entry.exited_ns != 0 {
            entry.executable = f.executable.as_deref().map(Arc::from);
        }
        entry.exited_ns = 0;
    }

    pub fn cgroup(&mut self, id: u64, path: &str) {
        self.cgroups.insert(
            id,
            Cgroup {
                path: Arc::from(path),
                container_id: crate::procs::container_id(path).map(Arc::from),
            },
        );
    }

    #[must_use]
    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.by_pid.get(&pid)
    }

    #[must_use]
    pub fn cgroup_of(&self, id: u64) -> Option<&Cgroup> {
        self.cgroups.get(&id)
    }

    /// Forgets processes that exited long enough ago.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(ts, pid)) = self.exits.front() {
            if ts.saturating_add(KEEP_EXITED_NS) > now_ns {
                break;
            }
            self.exits.pop_front();
            if self.by_pid.get(&pid).is_some_and(|e| e.exited_ns == ts) {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// Processes and cgroups remembered, for the memory figures.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.by_pid.len(), self.cgroups.len())
    }
}

/// The executed file's path from the kernel's walk (`ProcessExec::exe`: component names from
/// the file up, each NUL-terminated), or `None` when the kernel could not walk it.
#[must_use]
pub fn exe_path(e: &ProcessExec) -> Option<Arc<str>> {
    let used = e.exe.get(..e.exe_len as usize).filter(|b| !b.is_empty())?;
    let mut path = String::with_capacity(used.len() + 1);
    for part in used.strip_suffix(&[0]).unwrap_or(used).rsplit(|&b| b == 0) {
        if part.is_empty() {
            return None;
        }
        path.push('/');
        path.push_str(&String::from_utf8_lossy(part));
    }
    Some(Arc::from(path))
}

#[cfg(test)]
mod tests {
    use observer_common::{EXE_PATH_LEN, EventHeader, kind};

    use super::*;

    fn exec(pid: u32, name: &str) -> ProcessExec {
        walked(pid, name, b"")
    }

    /// An exec whose file the kernel walked: `exe` as the hook writes it.
    fn walked(pid: u32, name: &str, exe: &[u8]) -> ProcessExec {
        let mut filename = [0u8; EXEC_PATH_LEN];
        filename[..name.len()].copy_from_slice(name.as_bytes());
        let mut walk = [0xaa; EXE_PATH_LEN];
        walk[..exe.len()].copy_from_slice(exe);
        ProcessExec {
            header: EventHeader {
                kind: kind::PROCESS_EXEC,
                len: 0,
                _pad: 0,
                ts_ns: 1,
                pid_tgid: u64::from(pid) << 32 | u64::from(pid),
            },
            filename,
            exe: walk,
            exe_len: u32::try_from(exe.len()).expect("fits"),
            _pad: 0,
        }
    }

    #[test]
    fn the_kernels_walk_names_the_file_links_resolved() {
        let cases: [(&str, &[u8], Option<&str>); 6] = [
            // A symbolic link executed: the file it points to.
            (
                "/usr/bin/python3",
                b"python3.11\0bin\0usr\0",
                Some("/usr/bin/python3.11"),
            ),
            // A relative name needs no /proc once walked.
            (
                "./server",
                b"server\0build\0srv\0",
                Some("/srv/build/server"),
            ),
            // One component.
            ("/init", b"init\0", Some("/init")),
            // Not walked (too deep or too long): the name as executed, or /proc for a relative one.
            ("/opt/x/bin/tool", b"", Some("/opt/x/bin/tool")),
            ("./tool", b"", None),
            // A malformed walk (an empty component) is not trusted.
            ("/usr/bin/env", b"env\0\0usr\0", Some("/usr/bin/env")),
        ];
        for (name, exe, want) in cases {
            let mut p = Procs::default();
            p.exec(&walked(3, name, exe));
            assert_eq!(
                p.get(3).and_then(|e| e.executable.as_deref()),
                want,
                "{name} {exe:?}"
            );
        }
    }

    #[test]
    fn exec_exit_reuse_and_expiry() {
        let mut p = Procs::default();
        p.exec(&exec(7, "/usr/bin/curl"));
        assert_eq!(
            p.get(7).and_then(|e| e.executable.as_deref()),
            Some("/usr/bin/curl")
        );
        p.exit(7, 100);
        // Still named after its exit: its sockets' records come later.
        assert_eq!(p.get(7).map(|e| e.exited_ns), Some(100));
        // The pid is reused by a process that did not exec; /proc names it.
        p.fact(&ProcessFact {
            ts_ns: 200,
            pid: 7,
            executable: Some("/usr/sbin/nginx".into()),
        });
        assert_eq!(
            p.get(7).and_then(|e| e.executable.as_deref()),
            Some("/usr/sbin/nginx")
        );
        // The old exit no longer expires the new process.
        p.expire(100 + KEEP_EXITED_NS);
        assert!(p.get(7).is_some());
        p.exit(7, 300);
        p.expire(300 + KEEP_EXITED_NS);
        assert!(p.get(7).is_none());
    }

    #[test]
    fn relative_exec_names_wait_for_proc() {
        let mut p = Procs::default();
        p.exec(&exec(9, "./server"));
        assert_eq!(p.get(9).map(|e| e.executable.is_none()), Some(true));
    }

    #[test]
    fn cgroups_carry_their_container() {
        let mut p = Procs::default();
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        p.cgroup(5, &format!("/system.slice/docker-{id}.scope"));
        assert_eq!(
            p.cgroup_of(5).and_then(|c| c.container_id.as_deref()),
            Some(id)
        );
        p.cgroup(6, "/user.slice");
        assert!(p.cgroup_of(6).is_some_and(|c| c.container_id.is_none()));
    }
}
