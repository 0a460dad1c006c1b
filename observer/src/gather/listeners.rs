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
        listeners::{
            ListenPort, ListenSock, ListenerSample, NetnsStats, SOURCES, Source, queue_full,
        },
    },
    kernel::sockdiag::{self, ListenSocket},
    probe::ListenCountsRead,
    procs,
};

/// What one namespace yields.
struct Inside {
    sockets: Result<Vec<ListenSocket>, sockdiag::SockDiagError>,
    /// Connections waiting in a full accept queue: (local address, cookie).
    queued: Result<Vec<(SocketAddr, u64)>, sockdiag::SockDiagError>,
    netstat: String,
    syncookies: Option<u8>,
}

fn inside() -> Inside {
    let sockets = sockdiag::dump_listeners();
    let full = sockets.as_ref().is_ok_and(|s| {
        s.iter()
            .any(|l| l.state == tcp_state::LISTEN && queue_full(l.queue, l.backlog))
    });
    Inside {
        queued: if full { waiting() } else { Ok(Vec::new()) },
        sockets,
        netstat: std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap_or_default(),
        syncookies: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// The connections waiting in accept queues of the calling thread's namespace: established
/// (or already closed by the peer) and without a socket file, which `accept()` would give
/// them. Dumped only while some queue is full.
fn waiting() -> Result<Vec<(SocketAddr, u64)>, sockdiag::SockDiagError> {
    let mask = 1 << tcp_state::ESTABLISHED | 1 << tcp_state::CLOSE_WAIT;
    let mut queued: Vec<(SocketAddr, u64)> = sockdiag::dump_tcp_states(mask)?
        .into_iter()
        .filter(|s| s.inode == 0 && !s.timewait)
        .map(|s| (s.local, s.cookie))
        .collect();
    // A stable order for the samples (the kernel lists by hash bucket).
    queued.sort_by_key(|&(_, cookie)| cookie);
    Ok(queued)
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

/// The impure side of listener samples: remembers listener owners, the previous SYN counts per
/// source prefix, and each listening socket's SYN total.
#[derive(Default)]
pub struct Listeners {
    owners: HashMap<u64, Vec<Holder>>,
    previous_sources: HashMap<(u64, u8, [u8; 8]), u64>,
    totals: HashMap<u64, SynTotal>,
}

/// One listening socket's SYN total, kept in step with its per-source counts.
///
/// `SYN_SOURCES` and `LISTEN_COUNTS` are two per-CPU maps, read one after the other while SYNs
/// keep arriving, so their counts are never of the same instant: taken from each map, a
/// window's SYNs and its sources' SYNs differed by the SYNs that landed between the reads (512
/// against 513 in a 6.1 guest). So the total advances by what the sources gained since the
/// previous sample, from the same read. `LISTEN_COUNTS` only makes up what the sources lost
/// (entries the LRU evicted before they were read): a total never stays below what it had
/// counted by the previous sample, a second earlier, since those SYNs have long reached their
/// source entries or been evicted. So a total is a count of SYNs that arrived, at most a sample
/// behind; the sources of a sample sum to its SYNs, or to less when entries were evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SynTotal {
    syns: u64,
    /// `LISTEN_COUNTS`' SYNs at this sample: the floor for the next one's total.
    counted: u64,
}

impl SynTotal {
    /// The first sample of a socket: every SYN since the program attached.
    fn first(counted: u64, sourced: u64) -> Self {
        Self {
            syns: counted.max(sourced),
            counted,
        }
    }

    /// The next sample: `fresh` SYNs gained by its sources since the previous one.
    fn next(self, counted: u64, fresh: u64) -> Self {
        Self {
            syns: self.syns.saturating_add(fresh).max(self.counted),
            counted,
        }
    }
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
            let queued = got.queued.unwrap_or_else(|err| {
                warnings.push(format!(
                    "connections waiting in full accept queues of network namespace {}: {err} \
                     (accept_queue_overflow names none of them)",
                    ns.inode
                ));
                Vec::new()
            });
            let ports = self.ports(ns.inode, &sockets, &queued);
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
                queued: if queue_full(s.queue, s.backlog) {
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

    /// Adds the `listener_counts` program's counts: SYNs per port (its sockets' totals, see
    /// [`SynTotal`]) and ACKs (cumulative, summed over its sockets), and the SYNs per source
    /// prefix since the previous sample.
    fn join_counts(&mut self, sample: &mut ListenerSample, counts: &ListenCountsRead) {
        // What each source entry gained since the previous read.
        let mut fresh: HashMap<(u64, u8, [u8; 8]), u64> = HashMap::new();
        for (k, &n) in &counts.sources {
            let before = self.previous_sources.get(k).copied().unwrap_or(0);
            // An entry the LRU evicted and made again starts over.
            let delta = if n >= before { n - before } else { n };
            if delta > 0 {
                fresh.insert(*k, delta);
            }
        }
        let mut totals = HashMap::with_capacity(self.totals.len());
        for port in &mut sample.ports {
            let (mut syns, mut acks) = (0u64, 0u64);
            for sock in &port.sockets {
                let c = counts
                    .listeners
                    .get(&sock.cookie)
                    .copied()
                    .unwrap_or_default();
                let mine = |m: &HashMap<(u64, u8, [u8; 8]), u64>| -> u64 {
                    m.iter()
                        .filter(|(k, _)| k.0 == sock.cookie)
                        .map(|(_, &n)| n)
                        .sum()
                };
                let total = match self.totals.get(&sock.cookie) {
                    Some(t) => t.next(c.syns, mine(&fresh)),
                    None => SynTotal::first(c.syns, mine(&counts.sources)),
                };
                totals.insert(sock.cookie, total);
                syns = syns.saturating_add(total.syns);
                acks = acks.saturating_add(c.acks);
            }
            port.syns = Some(syns);
            port.handshakes = Some(acks);
            let mut by_prefix: BTreeMap<String, u64> = BTreeMap::new();
            for (k, &n) in fresh
                .iter()
                .filter(|(k, _)| port.sockets.iter().any(|s| s.cookie == k.0))
            {
                *by_prefix.entry(prefix_of_bytes(k.1, k.2)).or_default() += n;
            }
            for (prefix, n) in by_prefix {
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
        // Closed listeners are forgotten.
        self.totals = totals;
        self.previous_sources.clone_from(&counts.sources);
    }
}

#[cfg(test)]
mod tests {
    use observer_common::ListenCounts;

    use super::*;
    use crate::{
        detect::{Status, syn_flood},
        facts::listeners::{ListenPort, ListenSock},
    };

    const COOKIE: u64 = 77;
    const FLOOD: [u8; 8] = [10, 99, 1, 0, 0, 0, 0, 0];
    const OTHER: [u8; 8] = [192, 0, 2, 0, 0, 0, 0, 0];

    /// A listener on :8080 with nothing joined yet, at second `t`.
    fn bare(t: u64) -> ListenerSample {
        ListenerSample {
            ts_ns: t * 1_000_000_000,
            counted: true,
            namespaces: vec![NetnsStats {
                netns: 9,
                syncookies: Some(2),
                ..NetnsStats::default()
            }],
            ports: vec![ListenPort {
                netns: 9,
                port: 8080,
                sockets: vec![ListenSock {
                    local: "0.0.0.0:8080".parse().expect("addr"),
                    cookie: COOKIE,
                    queue: 0,
                    backlog: 16,
                    holders: Vec::new(),
                    queued: Vec::new(),
                }],
                half_open: 0,
                synack_retrans: 0,
                syns: None,
                handshakes: None,
                sources: Vec::new(),
            }],
        }
    }

    /// One read of the two maps: `LISTEN_COUNTS`' SYNs and each source entry's SYNs.
    fn read(counted: u64, sources: &[([u8; 8], u64)]) -> ListenCountsRead {
        ListenCountsRead {
            listeners: HashMap::from([(
                COOKIE,
                ListenCounts {
                    syns: counted,
                    acks: 0,
                },
            )]),
            sources: sources
                .iter()
                .map(|&(prefix, n)| ((COOKIE, 4, prefix), n))
                .collect(),
        }
    }

    /// Joins each read into its second's sample.
    fn joined(reads: &[ListenCountsRead]) -> Vec<ListenerSample> {
        let mut l = Listeners::default();
        (0u64..)
            .zip(reads)
            .map(|(t, r)| {
                let mut s = bare(t);
                l.join_counts(&mut s, r);
                s
            })
            .collect()
    }

    fn port_syns(s: &ListenerSample) -> u64 {
        s.ports[0].syns.expect("counted")
    }

    fn source_syns(s: &ListenerSample) -> Vec<(&str, u64)> {
        s.ports[0]
            .sources
            .iter()
            .map(|x| (x.prefix.as_str(), x.syns))
            .collect()
    }

    /// A steady flood from one /24, with the two maps read at different instants: the sources
    /// read 1 ahead of `LISTEN_COUNTS` at t=2 (a SYN between the reads, as in the 6.1 guest's
    /// 512 against 513), 2 behind at t=4 (SYNs still between the program's two updates), level
    /// elsewhere. Taken from each map, the window ending at t=4 had 1500 SYNs and 1498 from the
    /// flood's prefix, the one ending at t=5 1500 and 1499.
    #[test]
    fn a_windows_syns_and_its_sources_come_from_one_read() {
        let samples = joined(&[
            read(0, &[]),
            read(500, &[(FLOOD, 500)]),
            read(1000, &[(FLOOD, 1001)]),
            read(1500, &[(FLOOD, 1500)]),
            read(2000, &[(FLOOD, 1998)]),
            read(2500, &[(FLOOD, 2500)]),
        ]);
        assert_eq!(
            samples.iter().map(port_syns).collect::<Vec<_>>(),
            vec![0, 500, 1001, 1500, 1998, 2500]
        );
        for (s, n) in samples.iter().zip([0, 500, 501, 499, 498, 502]) {
            let want = if n == 0 {
                vec![]
            } else {
                vec![("10.99.1.0/24", n)]
            };
            assert_eq!(source_syns(s), want, "{s:?}");
        }
        // Through the rule: every alert's SYNs equal its one prefix's SYNs.
        let mut rule = syn_flood::Rule::new(syn_flood::Config {
            window_s: 3,
            ..syn_flood::Config::default()
        });
        let mut alerts = Vec::new();
        for s in &samples {
            rule.sample(s, &mut alerts);
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!((a.status, a.ts_ns), (Status::Firing, 1_000_000_000));
        assert_eq!(a.evidence["syns"], 500);
        assert_eq!(
            a.evidence["sources"],
            serde_json::json!([{"prefix": "10.99.1.0/24", "syns": 500, "half_open": 0}])
        );
        // Every window, not only the first alert's: the windows of 3 s ending at t=3..=5.
        for last in 3..samples.len() {
            let first = last - 3;
            let syns = port_syns(&samples[last]) - port_syns(&samples[first]);
            let sourced: u64 = samples[first + 1..=last]
                .iter()
                .flat_map(|s| s.ports[0].sources.iter().map(|x| x.syns))
                .sum();
            assert_eq!(sourced, syns, "window ending at t={last}");
        }
    }

    /// Source entries the LRU evicted before they were read. A few: their SYNs are missing
    /// from the total too (it stays a count of SYNs that arrived, never more). Many (a flood
    /// from random sources): the total keeps up with what `LISTEN_COUNTS` had counted a sample
    /// earlier, and the sources, a sample then, sum to less than the SYNs.
    #[test]
    fn syns_of_evicted_sources_keep_the_total_at_most_a_sample_behind() {
        let counted = [0, 100, 235, 1335, 2335];
        let samples = joined(&[
            read(counted[0], &[]),
            read(counted[1], &[(FLOOD, 60), (OTHER, 40)]),
            // OTHER's entry evicted with 30 SYNs unread, then made again by 5 more.
            read(counted[2], &[(FLOOD, 160), (OTHER, 5)]),
            // 1000 SYNs from 1000 other prefixes, each entry evicted before a read.
            read(counted[3], &[(FLOOD, 260), (OTHER, 5)]),
            read(counted[4], &[(FLOOD, 360), (OTHER, 5)]),
        ]);
        assert_eq!(
            samples.iter().map(port_syns).collect::<Vec<_>>(),
            vec![0, 100, 205, 305, 1335]
        );
        assert_eq!(
            source_syns(&samples[2]),
            vec![("10.99.1.0/24", 100), ("192.0.2.0/24", 5)]
        );
        assert_eq!(source_syns(&samples[4]), vec![("10.99.1.0/24", 100)]);
        for t in 1..samples.len() {
            assert!(port_syns(&samples[t]) >= counted[t - 1], "t={t}");
            let gained = port_syns(&samples[t]) - port_syns(&samples[t - 1]);
            let sourced: u64 = samples[t].ports[0].sources.iter().map(|x| x.syns).sum();
            assert!(sourced <= gained, "t={t}: {sourced} > {gained}");
        }
    }

    #[test]
    fn a_syn_total_follows_its_sources_and_never_falls_behind_the_listener_count() {
        // (previous total, previous count), count now, fresh SYNs of its sources → total.
        let cases = [
            ((0, 0), 10, 10, 10),
            ((10, 10), 19, 10, 20),
            ((20, 19), 30, 9, 29),
            // 30 counted by the previous sample, 25 seen: 5 lost to the LRU.
            ((20, 30), 40, 5, 30),
            ((7, 0), 0, 0, 7),
        ];
        for ((syns, counted), now, fresh, want) in cases {
            assert_eq!(
                SynTotal { syns, counted }.next(now, fresh),
                SynTotal {
                    syns: want,
                    counted: now
                },
                "{syns} {counted} {now} {fresh}"
            );
        }
        assert_eq!(SynTotal::first(10, 12).syns, 12);
        assert_eq!(SynTotal::first(12, 10).syns, 12);
    }

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
