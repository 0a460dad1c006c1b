//! Gathers the facts the tracker needs from outside the ring buffer: `sock_diag` listings of
//! every network namespace, the processes holding sockets, executables and cgroup paths from
//! /proc and cgroupfs. The impure side of `facts`; everything it learns goes through the
//! pipeline as an event, so recordings replay it.
//!
//! Costs: a listing is one netlink dump per network namespace (and, with holders, a walk of
//! every /proc/PID/fd); it runs at start, once per `--update-interval`, at shutdown and on
//! request. Executables and cgroups are looked up once per process and per cgroup, the first
//! time a record names them.

pub mod listeners;

use std::collections::HashSet;

use observer_common::{ConnState, conn_flag};

use crate::{
    facts::{
        Fact, Holder, NetnsTimeWait, ProcessFact, Purpose, SeenCounters, SeenSocket, SocketScan,
        TimeWaitCensus,
    },
    kernel::sockdiag::{self, TcpSocket},
    procs::{self, CgroupIndex},
};

/// Lists every TCP socket of every network namespace. With `holders`, also the processes
/// holding each one (socket inode ↔ /proc/PID/fd). Returns warnings for what was skipped.
#[must_use]
pub fn scan(ts_ns: u64, purpose: Purpose, holders: bool) -> (SocketScan, Vec<String>) {
    let (sockets, warnings) = sockdiag::dump_all();
    let owners = if holders {
        procs::socket_owners()
    } else {
        std::collections::HashMap::default()
    };
    let sockets = sockets
        .into_iter()
        .map(|(netns, s)| {
            let holders = owners
                .get(&s.inode)
                .filter(|_| s.inode != 0)
                .map(|pids| pids.iter().map(|&pid| holder(pid)).collect())
                .unwrap_or_default();
            seen(netns, &s, holders)
        })
        .collect();
    (
        SocketScan {
            ts_ns,
            purpose,
            sockets,
        },
        warnings,
    )
}

/// Counts the time-wait sockets of every network namespace (or only of `netns`) per (local
/// ip, remote ip:port), with each namespace's ephemeral port range. One kernel-filtered dump
/// per namespace: it lists time-wait sockets only.
#[must_use]
pub fn time_wait_census(ts_ns: u64, netns: Option<u32>) -> (TimeWaitCensus, Vec<String>) {
    let (dumps, warnings) = sockdiag::time_wait_all(netns);
    let namespaces = dumps
        .into_iter()
        .map(|d| {
            let mut counts: std::collections::BTreeMap<_, u32> = std::collections::BTreeMap::new();
            for s in &d.sockets {
                *counts.entry((s.local.ip(), s.remote)).or_default() += 1;
            }
            NetnsTimeWait {
                netns: d.inode,
                port_range: d.port_range,
                pairs: counts.into_iter().map(|((l, r), n)| (l, r, n)).collect(),
            }
        })
        .collect();
    (TimeWaitCensus { ts_ns, namespaces }, warnings)
}

fn holder(pid: u32) -> Holder {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Holder {
        pid,
        comm: comm.trim_end_matches('\n').to_owned(),
    }
}

fn seen(netns: u32, s: &TcpSocket, holders: Vec<Holder>) -> SeenSocket {
    SeenSocket {
        netns,
        cookie: s.cookie,
        state: s.state,
        local: s.local,
        remote: s.remote,
        uid: s.uid,
        counters: s.tcp_info.map(|i| SeenCounters {
            bytes_sent: i.bytes_sent,
            bytes_retrans: i.bytes_retrans,
            bytes_received: i.bytes_received,
            segs_in: i.segs_in,
            segs_out: i.segs_out,
            rtt_us: i.rtt_us,
            total_retrans: i.total_retrans,
        }),
        cgroup_id: s.cgroup_id,
        holders,
    }
}

/// Looks up each process and cgroup once: the facts a record about them needs.
pub struct Resolver {
    cgroups: Option<CgroupIndex>,
    pids: HashSet<u32>,
    cgroup_ids: HashSet<u64>,
}

/// Entries remembered before the sets start over (a pid is reused after its process exits; a
/// fresh look is cheap and rare).
const MAX_REMEMBERED: usize = 65_536;

impl Resolver {
    /// A resolver; without cgroup2 it warns once and names no cgroups.
    #[must_use]
    pub fn new() -> Self {
        let cgroups = match CgroupIndex::new() {
            Ok(index) => Some(index),
            Err(err) => {
                eprintln!("observer: warning: no cgroup paths or container ids: {err}");
                None
            }
        };
        Self {
            cgroups,
            pids: HashSet::new(),
            cgroup_ids: HashSet::new(),
        }
    }

    /// A process exited: its pid may name another process next.
    pub fn exited(&mut self, pid: u32) {
        self.pids.remove(&pid);
    }

    /// A process called `execve()`. With `walked`, the exec event named the file (the kernel
    /// walked its path) and /proc has nothing to add; else its executable as /proc resolves it
    /// (symbolic links followed), unless it is already gone.
    pub fn executed(&mut self, pid: u32, walked: bool, ts_ns: u64, out: &mut Vec<Fact>) {
        self.pids.remove(&pid);
        if walked {
            self.remember(pid);
        } else {
            self.process(pid, ts_ns, out);
        }
    }

    fn remember(&mut self, pid: u32) {
        if self.pids.len() >= MAX_REMEMBERED {
            self.pids.clear();
        }
        self.pids.insert(pid);
    }

    /// The facts needed to name the owner of `st`, if not looked up before.
    pub fn owner_of(&mut self, st: &ConnState, ts_ns: u64, out: &mut Vec<Fact>) {
        if st.flags & conn_flag::OWNER_VALID == 0 {
            return;
        }
        self.process(st.owner.tgid, ts_ns, out);
        self.cgroup(st.owner.cgroup_id, out);
    }

    pub fn process(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<Fact>) {
        if pid == 0 || self.pids.contains(&pid) {
            return;
        }
        self.remember(pid);
        // A zombie (exited, not yet reaped) has no readable executable: nothing is learnt,
        // and the name its exec gave must not be cleared.
        if let Some(info) = procs::read(pid).filter(|i| i.executable.is_some()) {
            out.push(Fact::Process(ProcessFact {
                ts_ns,
                pid,
                executable: info.executable,
            }));
        }
    }

    pub fn cgroup(&mut self, id: u64, out: &mut Vec<Fact>) {
        if id == 0 || self.cgroup_ids.contains(&id) {
            return;
        }
        let Some(index) = &mut self.cgroups else {
            return;
        };
        if let Some(path) = index.lookup(id) {
            if self.cgroup_ids.len() >= MAX_REMEMBERED {
                self.cgroup_ids.clear();
            }
            self.cgroup_ids.insert(id);
            out.push(Fact::Cgroup { id, path });
        }
    }

    /// The facts naming every holder and cgroup of a listing.
    pub fn scan(&mut self, scan: &SocketScan, out: &mut Vec<Fact>) {
        for s in &scan.sockets {
            for h in &s.holders {
                self.process(h.pid, scan.ts_ns, out);
            }
            if let Some(id) = s.cgroup_id {
                self.cgroup(id, out);
            }
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}
