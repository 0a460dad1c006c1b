//! The `listener_counts` `cgroup_skb` ingress program (observer-ebpf `listen.rs`): SYNs and
//! handshake ACKs per listening socket, read from its two per-CPU maps once a second.

use std::{collections::HashMap, fs::File};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLinkId},
};
use observer_common::{ListenCounts, SynSourceKey};

use super::{ProbeError, program_mut, tls_hooks::cgroup2_root};

const PROGRAM: &str = "listener_counts";

fn fail(action: String) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program {
        program: PROGRAM,
        action,
        source,
    }
}

/// The cumulative counts of every listening socket the program saw, by socket cookie.
#[derive(Debug, Clone, Default)]
pub struct ListenCountsRead {
    pub listeners: HashMap<u64, ListenCounts>,
    /// SYNs per (listener cookie, source prefix as family and bytes).
    pub sources: HashMap<(u64, u8, [u8; 8]), u64>,
}

pub struct ListenHooks {
    counts: PerCpuHashMap<MapData, u64, ListenCounts>,
    sources: PerCpuHashMap<MapData, SynSourceKey, u64>,
    link: Option<CgroupSkbLinkId>,
    pub attached: Option<String>,
}

impl ListenHooks {
    /// Verifies the program and takes its maps.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let p: &mut CgroupSkb = program_mut(ebpf, PROGRAM)?
            .try_into()
            .map_err(fail("type".into()))?;
        p.load().map_err(fail("loading".into()))?;
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
        };
        let counts = PerCpuHashMap::try_from(map(ebpf, "LISTEN_COUNTS")?).map_err(|source| {
            ProbeError::Map {
                name: "LISTEN_COUNTS",
                source,
            }
        })?;
        let sources = PerCpuHashMap::try_from(map(ebpf, "SYN_SOURCES")?).map_err(|source| {
            ProbeError::Map {
                name: "SYN_SOURCES",
                source,
            }
        })?;
        Ok(Self {
            counts,
            sources,
            link: None,
            attached: None,
        })
    }

    pub fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.link.is_some() {
            return Ok(());
        }
        let root = cgroup2_root().ok_or_else(|| {
            fail("finding the cgroup v2 root (mount it: `mount -t cgroup2 none /sys/fs/cgroup/unified`)".into())(
                aya::programs::ProgramError::UnexpectedProgramType,
            )
        })?;
        let cgroup = File::open(root).map_err(|e| {
            fail(format!("opening {root}: {e}"))(aya::programs::ProgramError::UnexpectedProgramType)
        })?;
        let p: &mut CgroupSkb = program_mut(ebpf, PROGRAM)?
            .try_into()
            .map_err(fail("type".into()))?;
        // A BPF link: coexists with every other program on the cgroup.
        let id = p
            .attach(
                &cgroup,
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .map_err(fail(format!("attaching to {root}")))?;
        self.link = Some(id);
        self.attached = Some(format!("cgroup_skb:{root}/{PROGRAM}"));
        Ok(())
    }

    pub fn detach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let Some(id) = self.link.take() else {
            return Ok(());
        };
        self.attached = None;
        let p: &mut CgroupSkb = program_mut(ebpf, PROGRAM)?
            .try_into()
            .map_err(fail("type".into()))?;
        p.detach(id).map_err(fail("detaching".into()))
    }

    /// Both maps, summed over CPUs.
    #[must_use]
    pub fn read(&self) -> ListenCountsRead {
        let mut out = ListenCountsRead::default();
        for (key, per_cpu) in self.counts.iter().filter_map(Result::ok) {
            let sum = per_cpu
                .iter()
                .fold(ListenCounts::default(), |a, c| ListenCounts {
                    syns: a.syns + c.syns,
                    acks: a.acks + c.acks,
                });
            out.listeners.insert(key, sum);
        }
        for (key, per_cpu) in self.sources.iter().filter_map(Result::ok) {
            out.sources
                .insert((key.cookie, key.family, key.prefix), per_cpu.iter().sum());
        }
        out
    }
}
