//! Attaching the TLS hooks: the `cgroup_skb` pair on the cgroup v2 root, and the library
//! uprobes on every library file `crate::tls::libs` finds, now and as processes start.
//! Each uprobe carries an attach cookie: which function (`tls_op`) and which file (its index
//! in `TlsHooks::names`, so records name the library's version).

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, UProbe,
        cgroup_skb::CgroupSkbLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use observer_common::tls_op;

use super::ProbeError;
use crate::tls::libs::{Finder, LibFile, LibKind};

const CALL: &str = "tls_call";
const RETURN: &str = "tls_return";
const EGRESS: &str = "tls_wire_egress";
const INGRESS: &str = "tls_wire_ingress";

/// (program, symbol, op) per library kind.
fn points(kind: LibKind) -> &'static [(&'static str, &'static str, u64)] {
    const SSL: &[(&str, &str, u64)] = &[
        (CALL, "SSL_do_handshake", tls_op::HANDSHAKE_OPENSSL),
        (RETURN, "SSL_do_handshake", 0),
        (CALL, "SSL_free", tls_op::FREE),
        (CALL, "SSL_get0_alpn_selected", tls_op::ALPN_OPENSSL),
        (RETURN, "SSL_get0_alpn_selected", tls_op::ALPN_OPENSSL),
    ];
    const GNUTLS: &[(&str, &str, u64)] = &[
        (CALL, "gnutls_handshake", tls_op::HANDSHAKE_GNUTLS),
        (RETURN, "gnutls_handshake", 0),
        (CALL, "gnutls_deinit", tls_op::FREE),
        (
            CALL,
            "gnutls_alpn_get_selected_protocol",
            tls_op::ALPN_GNUTLS,
        ),
        (
            RETURN,
            "gnutls_alpn_get_selected_protocol",
            tls_op::ALPN_GNUTLS,
        ),
    ];
    const STATIC: &[(&str, &str, u64)] = &[
        (CALL, "SSL_do_handshake", tls_op::HANDSHAKE_OPENSSL),
        (RETURN, "SSL_do_handshake", 0),
        (CALL, "SSL_free", tls_op::FREE),
        (CALL, "SSL_get0_alpn_selected", tls_op::ALPN_OPENSSL),
        (RETURN, "SSL_get0_alpn_selected", tls_op::ALPN_OPENSSL),
    ];
    match kind {
        LibKind::OpenSsl => SSL,
        LibKind::GnuTls => GNUTLS,
        LibKind::StaticOpenSsl => STATIC,
    }
}

/// The cgroup v2 root: `/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`.
pub(super) fn cgroup2_root() -> Option<&'static str> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| Path::new(p).join("cgroup.controllers").exists())
}

#[derive(Default)]
pub struct TlsHooks {
    finder: Finder,
    /// Library files attached to, by `lib_file` index: what `TlsTable::libraries` gets.
    pub names: Vec<String>,
    files: Vec<LibFile>,
    uprobes: Vec<(&'static str, UProbeLinkId)>,
    wire: Vec<(&'static str, CgroupSkbLinkId)>,
    /// The packet hooks loaded (`load`): without them, handshakes are seen through the
    /// libraries only.
    pub wire_loaded: bool,
    /// `uprobe:openssl/3.0.19:/usr/lib/…/libssl.so.3`, for `observer.agent`.
    pub attached: Vec<String>,
}

fn fail(
    program: &'static str,
    action: String,
) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program {
        program,
        action,
        source,
    }
}

/// Verifies the four TLS programs.
///
/// Returns whether the packet hooks loaded: a kernel whose verifier refuses them (seen on
/// Debian's 6.1) degrades to the library uprobes, with a named warning.
pub fn load(ebpf: &mut Ebpf) -> Result<bool, ProbeError> {
    for name in [CALL, RETURN] {
        let p: &mut UProbe = super::program_mut(ebpf, name)?
            .try_into()
            .map_err(fail(name, "type".into()))?;
        p.load().map_err(fail(name, "loading".into()))?;
    }
    for name in [EGRESS, INGRESS] {
        let p: &mut CgroupSkb = super::program_mut(ebpf, name)?
            .try_into()
            .map_err(fail(name, "type".into()))?;
        if let Err(err) = p.load() {
            eprintln!(
                "observer: warning: tls-wire-unavailable: this kernel refused the TLS packet hook \
                 {name} ({}); TLS handshakes are seen through the libraries only \
                 (timing and outcome, no version, cipher, SNI or ALPN from the wire)",
                refusal(&err)
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// Why the kernel refused a program, in one line: the verifier's verdict (the last line of its
/// log before the statistics), else the error itself.
fn refusal(err: &aya::programs::ProgramError) -> String {
    match err {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            match verdict(&log) {
                Some(line) => format!("{io_error}: {line}"),
                None => io_error.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The verifier's verdict in its log: the last line that is not one of its statistics.
fn verdict(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|l| {
        !l.is_empty()
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with("processed ")
    })
}

impl TlsHooks {
    /// Attaches the wire hooks and every library found so far.
    pub fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let root = cgroup2_root().ok_or_else(|| ProbeError::Program {
            program: EGRESS,
            action: "finding the cgroup v2 root (mount it: `mount -t cgroup2 none /sys/fs/cgroup/unified`)".into(),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let cgroup = File::open(root).map_err(|e| ProbeError::Program {
            program: EGRESS,
            action: format!("opening {root}: {e}"),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let wire: &[_] = if self.wire_loaded {
            &[
                (EGRESS, CgroupSkbAttachType::Egress),
                (INGRESS, CgroupSkbAttachType::Ingress),
            ]
        } else {
            &[]
        };
        for &(name, kind) in wire {
            let p: &mut CgroupSkb = super::program_mut(ebpf, name)?
                .try_into()
                .map_err(fail(name, "type".into()))?;
            // With a BPF link (5.7+), "Single" sends no flags, and links always coexist with
            // other programs on the cgroup; AllowMultiple would be refused with EINVAL.
            let id = p
                .attach(&cgroup, kind, CgroupAttachMode::Single)
                .map_err(fail(name, format!("attaching to {root}")))?;
            self.wire.push((name, id));
        }
        if self.wire_loaded {
            self.attached.push(format!("cgroup_skb:{root}"));
        }
        for file in self.files.clone() {
            self.attach_file(ebpf, &file, false);
        }
        let found = self.finder.scan_all();
        for file in found {
            self.attach_file(ebpf, &file, true);
        }
        Ok(())
    }

    /// Attaches to the libraries of processes that started since; returns what was new.
    pub fn scan_pids(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Vec<String> {
        let mut new = Vec::new();
        for &pid in pids {
            for file in self.finder.scan_pid(pid) {
                if self.attach_file(ebpf, &file, true) {
                    new.push(format!("{} ({})", file.path.display(), file.name));
                }
            }
        }
        new
    }

    /// Every library file in every running process (for libraries loaded with `dlopen()`).
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) -> Vec<String> {
        let mut new = Vec::new();
        for file in self.finder.scan_all() {
            if self.attach_file(ebpf, &file, true) {
                new.push(format!("{} ({})", file.path.display(), file.name));
            }
        }
        new
    }

    /// Attaches every probe point of one file; a missing symbol skips that point. True when
    /// at least one point attached.
    fn attach_file(&mut self, ebpf: &mut Ebpf, file: &LibFile, new: bool) -> bool {
        // One index per library version: the name is all a record needs.
        let index = if let Some(i) = self.names.iter().position(|n| *n == file.name) {
            i
        } else {
            self.names.push(file.name.clone());
            self.names.len() - 1
        };
        let Ok(index) = u64::try_from(index) else {
            return false;
        };
        let mut any = false;
        for &(program, symbol, op) in points(file.kind) {
            let Some(Ok(p)) = ebpf.program_mut(program).map(<&mut UProbe>::try_from) else {
                continue;
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(symbol),
                cookie: Some(op | (index & 0xff) << 8),
            };
            match p.attach(point, &file.path, UProbeScope::AllProcesses) {
                Ok(id) => {
                    self.uprobes.push((program, id));
                    any = true;
                }
                Err(err) if file.kind != LibKind::StaticOpenSsl => eprintln!(
                    "observer: warning: TLS uprobe {symbol} in {}: {err}",
                    file.path.display()
                ),
                Err(_) => {}
            }
        }
        if any {
            self.attached
                .push(format!("uprobe:{}:{}", file.name, file.path.display()));
            if new {
                self.files.push(file.clone());
            }
        }
        any
    }

    /// Detaches everything (pause); `attach` restores it, files included.
    pub fn detach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        // Each removal waits ~90 ms for the kernel, which serialises them (BENCHMARKS.md).
        for (name, id) in self.uprobes.drain(..) {
            let p: &mut UProbe = super::program_mut(ebpf, name)?
                .try_into()
                .map_err(fail(name, "type".into()))?;
            p.detach(id).map_err(fail(name, "detaching".into()))?;
        }
        for (name, id) in self.wire.drain(..) {
            let p: &mut CgroupSkb = super::program_mut(ebpf, name)?
                .try_into()
                .map_err(fail(name, "type".into()))?;
            p.detach(id).map_err(fail(name, "detaching".into()))?;
        }
        self.attached.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn the_verdict_is_the_last_line_before_the_statistics() {
        // The end of Debian 6.1's log for the packet hook before it read the task itself.
        let log = "105: (85) call bpf_get_current_pid_tgid#14\n\
                   unknown func bpf_get_current_pid_tgid#14\n\
                   verification time 4620 usec\n\
                   stack depth 0+112+0+0\n\
                   processed 99 insns (limit 1000000) max_states_per_insn 0 total_states 9\n\n";
        assert_eq!(
            verdict(log),
            Some("unknown func bpf_get_current_pid_tgid#14")
        );
        assert_eq!(verdict(""), None);
        assert_eq!(verdict("processed 1 insns\n"), None);
    }
}
