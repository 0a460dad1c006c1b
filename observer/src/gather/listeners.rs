//! Gathers a [`ListenerSample`]: in each network namespace (a short-lived thread `setns`es in,
//! as for every `sock_diag` dump), its listeners and half-open requests, `TcpExt` counters and
//! SYN-cookie mode; then joins the `listener_counts` program's counts by socket cookie.
//!
//! Cost, per sample: one stat per process to find the namespaces (only the filtered one with
//! `--netns`), per namespace a thread, two netlink dumps and two small /proc reads. Listener
//! owners come from a walk of every /proc/PID/fd, done only when a listener not seen before
//! appears.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use observer_common::tcp_state;

use super::holder;
use crate::{
    facts::{
        Holder,
        listeners::{ListenPort, ListenSock, ListenerSample, NetnsStats, SOURCES, Source},
    },
    kernel::sockdiag::{self, ListenSocket},
    probe::ListenCountsRead,
    procs,
};

/// What one namespace yields.
struct Inside {
    sockets: Result<Vec<ListenSocket>, sockdiag::SockDiagError>,
    /// Connections waiting in a full accept queue: (local address, cookie).
    queued: Vec<(SocketAddr, u64)>,
    netstat: String,
    syncookies: Option<u8>,
}

fn inside() -> Inside {
    let sockets = sockdiag::dump_listeners();
    let full = sockets.as_ref().is_ok_and(|s| {
        s.iter()
            .any(|l| l.state == tcp_state::LISTEN && l.queue > 0 && l.queue >= l.backlog)
    });
    Inside {
        queued: if full { waiting() } else { Vec::new() },
        sockets,
        netstat: std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default(),
        syncookies: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// The connections waiting in accept queues of the calling thread's namespace: established
/// (or already closed by the peer) and without a socket file, which `accept()` would give
/// them. Dumped only while some queue is full; an error leaves the alert without samples.
fn waiting() -> Vec<(SocketAddr, u64)> {
    let mask = 1 << tcp_state::ESTABLISHED | 1 << tcp_state::CLOSE_WAIT;
    let mut queued: Vec<(SocketAddr, u64)> = sockdiag::dump_tcp_states(mask)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.inode == 0 && !s.timewait)
        .map(|s| (s.local, s.cookie))
        .collect();
    // A stable order for the samples (the kernel lists by hash bucket).
    queued.sort_by_key(|&(_, cookie)| cookie);
    queued
}

/// Whether a connection to `local` is one `listener` accepts: the same port, and the same
/// address unless the listener's is the wildcard.
fn accepted_by(listener: SocketAddr, local: SocketAddr) -> bool {
    listener.port() == local.port()
        && (listener.ip().is_unspecified() || listener.ip() == local.ip())
}

/// Parses the `TcpExt` lines of /proc/net/netstat (a header line of names, a line of values).
#[must_use]
pub fn tcp_ext(netstat: &str, netns: u32, syncookies: Option<u8>) -> NetnsStats {
    let mut stats = NetnsStats {
        netns,
        syncookies,
        ..NetnsStats::default()
    };
    let mut lines = netstat.lines();
    while let Some(names) = lines.next() {
        let Some(values) = lines.next() else { break };
        let Some(names) = names.strip_prefix("TcpExt:") else {
            continue;
        };
        let values = values.strip_prefix("TcpExt:").unwrap_or_default();
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            let value = value.parse().unwrap_or(0);
            match name {
                "SyncookiesSent" => stats.syncookies_sent = value,
                "SyncookiesRecv" => stats.syncookies_recv = value,
                "SyncookiesFailed" => stats.syncookies_failed = value,
                "ListenOverflows" => stats.listen_overflows = value,
                "ListenDrops" => stats.listen_drops = value,
                "TCPReqQFullDoCookies" => stats.reqq_full_do_cookies = value,
                "TCPReqQFullDrop" => stats.reqq_full_drop = value,
                _ => {}
            }
        }
    }
    stats
}

/// The /24 or /64 of an address, as text.
#[must_use]
pub fn prefix_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}/24", Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn prefix_of_bytes(family: u8, bytes: [u8; 8]) -> String {
    if family == 4 {
        prefix_of(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], 0)))
    } else {
        let mut full = [0u8; 16];
        full[..8].copy_from_slice(&bytes);
        prefix_of(IpAddr::V6(Ipv6Addr::from(full)))
    }
}

/// The impure side of listener samples: remembers listener owners and the previous SYN
/// counts per source prefix.
#[derive(Default)]
pub struct Listeners {
    owners: HashMap<u64, Vec<Holder>>,
    previous_sources: HashMap<(u64, u8, [u8; 8]), u64>,
}

impl Listeners {
    /// A sample of the listeners of `netns` (every namespace when `None`), at `ts_ns`, with the
    /// `listener_counts` program's counts when there are some. Returns warnings for what was skipped.
    pub fn sample(
        &mut self,
        ts_ns: u64,
        netns: Option<u32>,
        counts: Option<&ListenCountsRead>,
    ) -> (ListenerSample, Vec<String>) {
        let mut warnings = Vec::new();
        let mut sample = ListenerSample {
            ts_ns,
            counted: counts.is_some(),
            namespaces: Vec::new(),
            ports: Vec::new(),
        };
        let here = std::fs::metadata("/proc/thread-self/ns/net")
            .ok()
            .and_then(|m| u32::try_from(std::os::unix::fs::MetadataExt::ino(&m)).ok());
        let mut inodes = std::collections::HashSet::new();
        for ns in sockdiag::namespaces()
            .into_iter()
            .filter(|n| netns.is_none_or(|want| want == n.inode))
        {
            let got = if Some(ns.inode) == here {
                Ok(inside())
            } else {
                sockdiag::in_netns(&ns.path, inside)
            };
            let got = match got {
                Ok(got) => got,
                Err(err) => {
                    warnings.push(format!(
                        "listeners of network namespace {}: {err}",
                        ns.inode
                    ));
                    continue;
                }
            };
            let sockets = match got.sockets {
                Ok(s) => s,
                Err(err) => {
                    warnings.push(format!(
                        "listeners of network namespace {}: {err}",
                        ns.inode
                    ));
                    continue;
                }
            };
            sample
                .namespaces
                .push(tcp_ext(&got.netstat, ns.inode, got.syncookies));
            inodes.extend(sockets.iter().map(|s| s.inode));
            let ports = self.ports(ns.inode, &sockets, &got.queued);
            sample.ports.extend(ports);
        }
        // Closed listeners' owners are forgotten; an inode may name another socket later.
        self.owners.retain(|inode, _| inodes.contains(inode));
        if let Some(counts) = counts {
            self.join_counts(&mut sample, counts);
        }
        for port in &mut sample.ports {
            port.sources.sort_by(|a, b| {
                (b.syns, b.half_open)
                    .cmp(&(a.syns, a.half_open))
                    .then_with(|| a.prefix.cmp(&b.prefix))
            });
            port.sources.truncate(SOURCES);
        }
        (sample, warnings)
    }

    fn ports(
        &mut self,
        netns: u32,
        sockets: &[ListenSocket],
        queued: &[(SocketAddr, u64)],
    ) -> Vec<ListenPort> {
        let mut by_port: BTreeMap<u16, ListenPort> = BTreeMap::new();
        let mut half_open: BTreeMap<(u16, String), u32> = BTreeMap::new();
        let unknown: Vec<u64> = sockets
            .iter()
            .filter(|s| s.state == tcp_state::LISTEN && s.inode != 0)
            .map(|s| s.inode)
            .filter(|i| !self.owners.contains_key(i))
            .collect();
        if !unknown.is_empty() {
            let owners = procs::socket_owners();
            for inode in unknown {
                let holders = owners
                    .get(&inode)
                    .map(|pids| pids.iter().map(|&pid| holder(pid)).collect())
                    .unwrap_or_default();
                self.owners.insert(inode, holders);
            }
        }
        for s in sockets.iter().filter(|s| s.state == tcp_state::LISTEN) {
            let port = by_port.entry(s.local.port()).or_insert_with(|| ListenPort {
                netns,
                port: s.local.port(),
                sockets: Vec::new(),
                half_open: 0,
                synack_retrans: 0,
                syns: None,
                handshakes: None,
                sources: Vec::new(),
            });
            port.sockets.push(ListenSock {
                local: s.local,
                cookie: s.cookie,
                queue: s.queue,
                backlog: s.backlog,
                holders: self.owners.get(&s.inode).cloned().unwrap_or_default(),
                queued: if s.queue > 0 && s.queue >= s.backlog {
                    queued
                        .iter()
                        .filter(|&&(local, _)| accepted_by(s.local, local))
                        .map(|&(_, cookie)| cookie)
                        .take(crate::detect::SAMPLES)
                        .collect()
                } else {
                    Vec::new()
                },
            });
        }
        for s in sockets.iter().filter(|s| s.state != tcp_state::LISTEN) {
            if let Some(port) = by_port.get_mut(&s.local.port()) {
                port.half_open += 1;
                port.synack_retrans += u32::from(s.retrans);
                *half_open
                    .entry((s.local.port(), prefix_of(s.remote.ip())))
                    .or_default() += 1;
            }
        }
        for ((port, prefix), n) in half_open {
            if let Some(p) = by_port.get_mut(&port) {
                p.sources.push(Source {
                    prefix,
                    syns: 0,
                    half_open: n,
                });
            }
        }
        for p in by_port.values_mut() {
            p.sockets.sort_by_key(|s| s.local);
        }
        by_port.into_values().collect()
    }

    /// Adds the `listener_counts` program's counts: cumulative SYNs and ACKs per port (summed
    /// over its sockets), and the SYNs per source prefix since the previous sample.
    fn join_counts(&mut self, sample: &mut ListenerSample, counts: &ListenCountsRead) {
        for port in &mut sample.ports {
            let (mut syns, mut acks) = (0, 0);
            for sock in &port.sockets {
                if let Some(c) = counts.listeners.get(&sock.cookie) {
                    syns += c.syns;
                    acks += c.acks;
                }
            }
            port.syns = Some(syns);
            port.handshakes = Some(acks);
            let mut fresh: BTreeMap<String, u64> = BTreeMap::new();
            for (k, &n) in counts
                .sources
                .iter()
                .filter(|(k, _)| port.sockets.iter().any(|s| s.cookie == k.0))
            {
                let before = self.previous_sources.get(k).copied().unwrap_or(0);
                // An entry the LRU evicted and made again starts over.
                let delta = if n >= before { n - before } else { n };
                if delta > 0 {
                    *fresh.entry(prefix_of_bytes(k.1, k.2)).or_default() += delta;
                }
            }
            for (prefix, n) in fresh {
                if let Some(s) = port.sources.iter_mut().find(|s| s.prefix == prefix) {
                    s.syns = n;
                } else {
                    port.sources.push(Source {
                        prefix,
                        syns: n,
                        half_open: 0,
                    });
                }
            }
        }
        self.previous_sources.clone_from(&counts.sources);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcp_ext_counters() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts \
                       ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop\n\
                       TcpExt: 11 2 3 0 5 6 7 8\n\
                       IpExt: InNoRoutes\nIpExt: 9\n";
        assert_eq!(
            tcp_ext(netstat, 42, Some(2)),
            NetnsStats {
                netns: 42,
                syncookies: Some(2),
                syncookies_sent: 11,
                syncookies_recv: 2,
                syncookies_failed: 3,
                listen_overflows: 5,
                listen_drops: 6,
                reqq_full_do_cookies: 7,
                reqq_full_drop: 8,
            }
        );
        assert_eq!(
            tcp_ext("", 1, None),
            NetnsStats {
                netns: 1,
                ..NetnsStats::default()
            }
        );
    }

    #[test]
    fn names_source_prefixes() {
        assert_eq!(prefix_of("10.99.1.7".parse().expect("ip")), "10.99.1.0/24");
        assert_eq!(
            prefix_of("2001:db8:1:2:3:4:5:6".parse().expect("ip")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            prefix_of_bytes(4, [192, 0, 2, 0, 0, 0, 0, 0]),
            "192.0.2.0/24"
        );
        assert_eq!(
            prefix_of_bytes(6, [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 9]),
            "2001:db8:0:9::/64"
        );
    }
}
