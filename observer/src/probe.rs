//! The only module that touches aya: loads the embedded eBPF object with this kernel's layout,
//! attaches every hook, and hands out the ring buffer and the loss counters. Everything
//! downstream sees bytes and plain Rust types.

mod capture;
mod table;

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use observer_common::{ConnState, Layout, Settings, counter};
use thiserror::Error;

use crate::kernel::{
    btf::Btf,
    layout::{self, Choices, LayoutError},
    tracefs::{self, TracefsError},
};

mod listen_hooks;
mod tls_hooks;

pub use capture::Capture;
pub use listen_hooks::ListenCountsRead;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Where a hook attaches, for loading and for `observer check`.
pub struct Hook {
    pub program: &'static str,
    pub kind: HookKind,
    /// What the observer loses without it.
    pub role: &'static str,
    /// Attached only on request (`--accept-hook`).
    pub optional: bool,
}

pub enum HookKind {
    BtfTracepoint(&'static str),
    Tracepoint(&'static [(&'static str, &'static str)]),
}

pub const HOOKS: &[Hook] = &[
    Hook {
        program: "inet_sock_set_state",
        kind: HookKind::BtfTracepoint("inet_sock_set_state"),
        role: "every TCP state transition",
        optional: false,
    },
    Hook {
        program: "inet_sock_set_state_nested",
        kind: HookKind::BtfTracepoint("inet_sock_set_state"),
        role: "transitions in a softirq that interrupted the first hook (the kernel skips a program already running on the CPU)",
        optional: false,
    },
    Hook {
        program: "tcp_retransmit_skb",
        kind: HookKind::Tracepoint(&[("tcp", "tcp_retransmit_skb")]),
        role: "SYN and data retransmits",
        optional: false,
    },
    Hook {
        program: "tcp_retransmit_synack",
        kind: HookKind::Tracepoint(&[("tcp", "tcp_retransmit_synack")]),
        role: "SYN-ACK retransmits",
        optional: false,
    },
    Hook {
        program: "tcp_send_reset",
        kind: HookKind::Tracepoint(&[("tcp", "tcp_send_reset")]),
        role: "RSTs sent",
        optional: false,
    },
    Hook {
        program: "tcp_receive_reset",
        kind: HookKind::Tracepoint(&[("tcp", "tcp_receive_reset")]),
        role: "RSTs received",
        optional: false,
    },
    Hook {
        program: "sched_process_exec",
        kind: HookKind::Tracepoint(&[("sched", "sched_process_exec")]),
        role: "the executable of socket owners that exit before userspace sees them",
        optional: false,
    },
    Hook {
        program: "sched_process_exit",
        kind: HookKind::Tracepoint(&[("sched", "sched_process_exit")]),
        role: "process exits (pid reuse)",
        optional: false,
    },
    Hook {
        program: "sys_exit_accept",
        kind: HookKind::Tracepoint(&[
            ("syscalls", "sys_exit_accept4"),
            ("syscalls", "sys_exit_accept"),
        ]),
        role: "owner at accept() and accept wait (--accept-hook)",
        optional: true,
    },
];

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("observer must run as root to load eBPF programs: run it with sudo")]
    NotRoot,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "this kernel has no BTF ({0}): observer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, Fedora and RHEL kernels have it)"
    )]
    NoBtf(String),
    #[error("cannot resolve this kernel's struct and tracepoint layout")]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("program {program}: {action} failed")]
    Program {
        program: &'static str,
        action: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("cannot read the kernel's socket table ({name})")]
    Table {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot poll the ring buffer")]
    Poll(#[source] std::io::Error),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Sizes and switches fixed at load time.
#[derive(Debug, Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches, each a command-line flag"
)]
pub struct ProbeConfig {
    /// Sockets tracked at once in the kernel map.
    pub max_connections: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Emit one event per transition (`--transitions`).
    pub transitions: bool,
    /// Attach the optional accept hook (`--accept-hook`).
    pub accept_hook: bool,
    /// Observe TLS handshakes (`--tls`).
    pub tls: bool,
    /// Count SYNs and handshake ACKs per listener (`cgroup_skb` ingress; for `syn_flood`).
    pub listeners: bool,
}

pub struct Probe {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    links: Vec<Link>,
    accept_hook: bool,
    /// `None` without `--tls`.
    tls: Option<tls_hooks::TlsHooks>,
    /// `None` unless `ProbeConfig::listeners`, or when the kernel refused it (warned).
    listen: Option<listen_hooks::ListenHooks>,
    counters: PerCpuArray<MapData, u64>,
    /// The highest `lifecycle_lost` reported, so that the total never goes back.
    lifecycle_lost: AtomicU64,
    pub choices: Choices,
    /// "category:name" of every attached hook.
    pub attached: Vec<String>,
}

/// One attachment, to detach on pause.
enum Link {
    Btf(&'static str, BtfTracePointLinkId),
    Tracepoint(&'static str, TracePointLinkId),
}

/// Offsets for this kernel, from BTF and tracefs.
///
/// # Errors
/// No BTF, no tracefs, or a layout mismatch.
pub fn resolve_layout() -> Result<(Layout, Choices), ProbeError> {
    let root = tracefs::ensure_mounted()?;
    let btf_path = Path::new("/sys/kernel/btf/vmlinux");
    let data = std::fs::read(btf_path)
        .map_err(|e| ProbeError::NoBtf(format!("{}: {e}", btf_path.display())))?;
    let btf = Btf::parse(&data).map_err(|e| ProbeError::NoBtf(e.to_string()))?;
    Ok(layout::resolve(&btf, &root)?)
}

impl Probe {
    /// Loads and attaches everything; returns the probe and the ring buffer to drain.
    ///
    /// # Errors
    /// Not root, no BTF or tracefs, a layout mismatch, or a verifier or attach failure.
    pub fn load(config: ProbeConfig) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        let (layout, choices) = resolve_layout()?;
        let slots = observer_common::HOT_SLOTS;
        let settings = Settings {
            emit_transitions: u32::from(config.transitions),
            wakeup_bytes: config.ring_bytes / 4,
            slot_mask: slots - 1,
            slot_bits: slots.trailing_zeros(),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("LAYOUT", &layout, true)
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("SLOTS", slots)
            .map_max_entries("CONNS", config.max_connections)
            .map_max_entries("EVENTS", config.ring_bytes)
            .load(OBJECT)
            .map_err(ProbeError::Load)?;
        load_all(&mut ebpf)?;
        let wire_loaded = config.tls && tls_hooks::load(&mut ebpf)?;
        let listen = if config.listeners {
            match listen_hooks::ListenHooks::load(&mut ebpf) {
                Ok(hooks) => Some(hooks),
                Err(err) => {
                    eprintln!(
                        "observer: warning: no SYN counts per listener: {err:#}; syn_flood uses \
                         the half-open lists and namespace counters only"
                    );
                    None
                }
            }
        } else {
            None
        };
        let ring = take_map(&mut ebpf, "EVENTS")?;
        let ring = RingBuf::try_from(ring).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| ProbeError::Map {
            name: "COUNTERS",
            source,
        })?;
        let mut probe = Self {
            ebpf,
            links: Vec::new(),
            accept_hook: config.accept_hook,
            tls: config.tls.then(|| {
                let mut hooks = tls_hooks::TlsHooks::default();
                hooks.wire_loaded = wire_loaded;
                hooks
            }),
            listen,
            counters,
            lifecycle_lost: AtomicU64::new(0),
            choices,
            attached: Vec::new(),
        };
        probe.resume()?;
        Ok((probe, ring))
    }

    /// Attaches every hook (after `load` or `pause`).
    ///
    /// # Errors
    /// An attach failure.
    pub fn resume(&mut self) -> Result<(), ProbeError> {
        if !self.links.is_empty() {
            return Ok(());
        }
        self.attached.clear();
        for hook in HOOKS.iter().filter(|h| !h.optional || self.accept_hook) {
            let fail = |action: String| {
                move |source| ProbeError::Program {
                    program: hook.program,
                    action,
                    source,
                }
            };
            let program = program_mut(&mut self.ebpf, hook.program)?;
            match hook.kind {
                HookKind::BtfTracepoint(name) => {
                    let p: &mut BtfTracePoint = program.try_into().map_err(fail("type".into()))?;
                    let id = p
                        .attach()
                        .map_err(fail(format!("attaching tp_btf/{name}")))?;
                    self.links.push(Link::Btf(hook.program, id));
                    self.attached.push(if hook.program == name {
                        format!("tp_btf:{name}")
                    } else {
                        format!("tp_btf:{name}/{}", hook.program)
                    });
                }
                HookKind::Tracepoint(points) => {
                    let p: &mut TracePoint = program.try_into().map_err(fail("type".into()))?;
                    for (category, name) in points {
                        let id = p
                            .attach(category, name)
                            .map_err(fail(format!("attaching {category}:{name}")))?;
                        self.links.push(Link::Tracepoint(hook.program, id));
                        self.attached.push(format!("{category}:{name}"));
                    }
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.attach(&mut self.ebpf)?;
            self.attached.extend(tls.attached.iter().cloned());
        }
        if let Some(listen) = &mut self.listen {
            listen.attach(&mut self.ebpf)?;
            self.attached.extend(listen.attached.clone());
        }
        Ok(())
    }

    /// TLS libraries mapped by these (newly started) processes get their uprobes; returns
    /// the files that were new.
    pub fn tls_scan_pids(&mut self, pids: &[u32]) -> Vec<String> {
        match &mut self.tls {
            Some(tls) if !self.links.is_empty() => tls.scan_pids(&mut self.ebpf, pids),
            _ => Vec::new(),
        }
    }

    /// The same for every running process (libraries loaded later with `dlopen()`).
    pub fn tls_scan_all(&mut self) -> Vec<String> {
        match &mut self.tls {
            Some(tls) if !self.links.is_empty() => tls.scan_all(&mut self.ebpf),
            _ => Vec::new(),
        }
    }

    /// Names of the TLS library files by the index their uprobes report.
    #[must_use]
    pub fn tls_libraries(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(|t| t.names.clone())
            .unwrap_or_default()
    }

    /// One step of a pause, which detaches every hook, so that none runs (a paused observer
    /// costs the kernel nothing), and forgets every tracked socket: after `resume` they are
    /// met again as pre-existing. Each step detaches one hook and says whether another is
    /// left: drain the ring between steps, as a detach waits for the kernel's RCU grace
    /// periods (tens of ms) while the hooks still attached keep filling the ring.
    ///
    /// # Errors
    /// A detach failure.
    pub fn pause_step(&mut self) -> Result<bool, ProbeError> {
        // In the order they were attached.
        if !self.links.is_empty() {
            let link = self.links.remove(0);
            detach(&mut self.ebpf, link)?;
            return Ok(true);
        }
        if let Some(tls) = &mut self.tls {
            tls.detach(&mut self.ebpf)?;
        }
        if let Some(listen) = &mut self.listen {
            listen.detach(&mut self.ebpf)?;
        }
        self.attached.clear();
        self.forget_sockets().map(|()| false)
    }

    /// Empties `SLOTS` and `CONNS` (only while paused: no program runs).
    fn forget_sockets(&mut self) -> Result<(), ProbeError> {
        let map = |name| ProbeError::MissingMap(name);
        let slots = self.ebpf.map_mut("SLOTS").ok_or(map("SLOTS"))?;
        let mut slots: Array<_, ConnState> =
            Array::try_from(slots).map_err(|source| ProbeError::Map {
                name: "SLOTS",
                source,
            })?;
        let empty = ConnState::zeroed();
        for i in 0..slots.len() {
            if slots.get(&i, 0).is_ok_and(|st| st.key != 0) {
                let _ = slots.set(i, empty, 0);
            }
        }
        let conns = self.ebpf.map_mut("CONNS").ok_or(map("CONNS"))?;
        let mut conns: AyaHashMap<_, u64, ConnState> =
            AyaHashMap::try_from(conns).map_err(|source| ProbeError::Map {
                name: "CONNS",
                source,
            })?;
        let keys: Vec<u64> = conns.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = conns.remove(&key);
        }
        Ok(())
    }

    /// Every socket the kernel tracks now, with its transitions and owner so far. Batched:
    /// about one syscall per 4096 sockets.
    ///
    /// # Errors
    /// The kernel refused the batch lookup.
    pub fn table(&self) -> Result<Vec<ConnState>, ProbeError> {
        let mut out = Vec::new();
        for name in ["SLOTS", "CONNS"] {
            let fd = match self.ebpf.map(name) {
                Some(aya::maps::Map::Array(data) | aya::maps::Map::HashMap(data)) => {
                    data.fd().as_fd().as_raw_fd()
                }
                _ => return Err(ProbeError::MissingMap(name)),
            };
            let read = if name == "SLOTS" {
                table::read_all::<u32>(fd, |st| st.key != 0, &mut out)
            } else {
                table::read_all::<u64>(fd, |st| st.key != 0, &mut out)
            };
            read.map_err(|source| ProbeError::Table { name, source })?;
        }
        Ok(out)
    }

    /// SYNs and handshake ACKs per listening socket so far; `None` without the program.
    #[must_use]
    pub fn listen_counts(&self) -> Option<ListenCountsRead> {
        self.listen.as_ref().map(listen_hooks::ListenHooks::read)
    }

    /// The kernel's counters, summed over CPUs (indexes in `observer_common::counter`), and
    /// the runs the kernel skipped, summed over programs.
    #[must_use]
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let misses = |fd: BorrowedFd<'_>| table::recursion_misses(fd.as_raw_fd());
        // Read before `TAKEN_OVER`, which counts a subset of these skips a moment after each.
        let first = self
            .ebpf
            .program("inet_sock_set_state")
            .and_then(|p| p.fd().ok())
            .and_then(|fd| misses(fd.as_fd()))
            .unwrap_or(0);
        let mut out = [0; counter::COUNT as usize];
        for (i, slot) in (0..counter::COUNT).zip(out.iter_mut()) {
            if let Ok(per_cpu) = self.counters.get(&i, 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        // The second state-change program takes over the first's skipped runs. It is itself
        // skipped only for transitions of a softirq that interrupted it, which the first
        // program handled: its own skips are not losses.
        let others: u64 = self
            .ebpf
            .programs()
            .filter(|(name, _)| !name.starts_with("inet_sock_set_state"))
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| misses(fd.as_fd()))
            .sum();
        let lost = lifecycle_lost(first, out[counter::TAKEN_OVER as usize]);
        let lost = self
            .lifecycle_lost
            .fetch_max(lost, Ordering::Relaxed)
            .max(lost);
        out[counter::RECURSION_MISSES as usize] = others + lost;
        out
    }
}

/// Transitions lost to the first state-change program's skipped runs: those the second did
/// not take over. `taken_over` is read after `first_skipped`, so it may count skips newer than
/// that reading; the difference is then too small for a moment, never too large (the caller
/// keeps the highest value seen).
fn lifecycle_lost(first_skipped: u64, taken_over: u64) -> u64 {
    first_skipped.saturating_sub(taken_over)
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut aya::programs::Program, ProbeError> {
    ebpf.program_mut(program).ok_or(ProbeError::Program {
        program,
        action: "lookup".into(),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })
}

fn detach(ebpf: &mut Ebpf, link: Link) -> Result<(), ProbeError> {
    let (program, result) = match link {
        Link::Btf(name, id) => {
            let p: &mut BtfTracePoint =
                program_mut(ebpf, name)?
                    .try_into()
                    .map_err(|source| ProbeError::Program {
                        program: name,
                        action: "type".into(),
                        source,
                    })?;
            (name, p.detach(id))
        }
        Link::Tracepoint(name, id) => {
            let p: &mut TracePoint =
                program_mut(ebpf, name)?
                    .try_into()
                    .map_err(|source| ProbeError::Program {
                        program: name,
                        action: "type".into(),
                        source,
                    })?;
            (name, p.detach(id))
        }
    };
    result.map_err(|source| ProbeError::Program {
        program,
        action: "detaching".into(),
        source,
    })
}

/// Loads (verifies) every program once; `Probe::resume` attaches them.
fn load_all(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let kernel_btf = AyaBtf::from_sys_fs().map_err(|e| ProbeError::NoBtf(e.to_string()))?;
    for hook in HOOKS {
        let fail = |action: String| {
            move |source| ProbeError::Program {
                program: hook.program,
                action,
                source,
            }
        };
        let program = program_mut(ebpf, hook.program)?;
        match hook.kind {
            HookKind::BtfTracepoint(name) => {
                let p: &mut BtfTracePoint = program.try_into().map_err(fail("type".into()))?;
                p.load(name, &kernel_btf)
                    .map_err(fail(format!("loading tp_btf/{name}")))?;
            }
            HookKind::Tracepoint(_) => {
                let p: &mut TracePoint = program.try_into().map_err(fail("type".into()))?;
                p.load().map_err(fail("loading".into()))?;
            }
        }
    }
    Ok(())
}
