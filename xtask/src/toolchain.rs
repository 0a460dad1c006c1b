//! The eBPF toolchain: a nightly rustc with rust-src, and bpf-linker built against that
//! nightly's own libLLVM (Debian 12 has no LLVM of the same major version).

use std::{
    env,
    ffi::OsStr,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bootstrap::{TOOLCHAIN_ENV, say},
    cmd,
};

/// The nightly installed when the requested toolchain is not usable.
const PINNED: &str = "nightly-2026-05-20";
const LINKER_VERSION: &str = "0.13.0";

pub struct Toolchain {
    pub name: String,
    release: String,
    commit: String,
    llvm_version: String,
    sysroot: PathBuf,
}

impl Toolchain {
    fn llvm_major(&self) -> &str {
        self.llvm_version
            .split('.')
            .next()
            .unwrap_or(&self.llvm_version)
    }

    fn summary(&self) -> String {
        let short = self.commit.get(..9).unwrap_or(&self.commit);
        format!(
            "{} (rustc {} {short}, LLVM {})",
            self.name, self.release, self.llvm_version
        )
    }
}

fn rustup(path: &OsStr) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.env("PATH", path);
    cmd
}

/// `rustc -vV` and the sysroot of toolchain `name`, or `None` when it does not run.
fn describe(name: &str, path: &OsStr) -> Option<Toolchain> {
    let vv = cmd::probe(rustup(path).args(["run", name, "rustc", "-vV"]))?;
    let field = |key: &str| {
        vv.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
            .map(|v| v.trim().to_owned())
    };
    let sysroot = cmd::probe(rustup(path).args(["run", name, "rustc", "--print", "sysroot"]))?;
    Some(Toolchain {
        name: name.to_owned(),
        release: field("release")?,
        commit: field("commit-hash")?,
        llvm_version: field("LLVM version")?,
        sysroot: PathBuf::from(sysroot.trim()),
    })
}

/// The toolchain named by `OBSERVER_BPF_TOOLCHAIN` (default `nightly`); when it does not run,
/// the pinned nightly, installed if needed.
pub fn ensure(path: &OsStr) -> Result<Toolchain> {
    let requested = env::var(TOOLCHAIN_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nightly".to_owned());
    if let Some(toolchain) = describe(&requested, path) {
        say("eBPF toolchain", &toolchain.summary());
        return Ok(toolchain);
    }
    if requested != PINNED
        && let Some(toolchain) = describe(PINNED, path)
    {
        say(
            "eBPF toolchain",
            &format!(
                "{requested} does not run; using {}, passed on as {TOOLCHAIN_ENV}",
                toolchain.summary()
            ),
        );
        return Ok(toolchain);
    }
    say(
        "eBPF toolchain",
        &format!("{requested} does not run; installing {PINNED}"),
    );
    cmd::run(rustup(path).args(["toolchain", "install", PINNED, "--profile", "minimal"])).context(
        "installing the eBPF nightly failed: check network access to static.rust-lang.org",
    )?;
    let toolchain = describe(PINNED, path).with_context(|| {
        format!("`rustup run {PINNED} rustc -vV` still fails after installing it: run it by hand")
    })?;
    say(
        "eBPF toolchain",
        &format!(
            "installed {}; {TOOLCHAIN_ENV}={PINNED} is passed to the build",
            toolchain.summary()
        ),
    );
    Ok(toolchain)
}

/// `-Z build-std=core` needs the standard library's sources.
pub fn ensure_rust_src(toolchain: &Toolchain, path: &OsStr) -> Result<()> {
    let name = toolchain.name.as_str();
    let installed =
        cmd::probe(rustup(path).args(["component", "list", "--toolchain", name, "--installed"]))
            .with_context(|| {
                format!("`rustup component list --toolchain {name} --installed` failed")
            })?;
    if installed
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-"))
    {
        say("rust-src", &format!("already installed for {name}"));
        return Ok(());
    }
    cmd::run(rustup(path).args(["component", "add", "rust-src", "--toolchain", name]))
        .context("adding rust-src failed: check network access to static.rust-lang.org")?;
    say("rust-src", &format!("installed for {name}"));
    Ok(())
}

/// bpf-linker, linked against the toolchain's libLLVM through a prefix that outlives /tmp.
/// A stamp records what it was built against; a new nightly rebuilds it.
pub fn ensure_bpf_linker(toolchain: &Toolchain, path: &OsStr) -> Result<()> {
    let libllvm = find_libllvm(&toolchain.sysroot)?;
    let lib_name = libllvm
        .file_name()
        .and_then(OsStr::to_str)
        .context("libLLVM's file name is not UTF-8")?
        .to_owned();
    let prefix = cmd::home_dir()?.join(".local/share/observer/llvm-prefix");
    link_libllvm(&prefix.join("lib"), &libllvm, &lib_name)?;

    let stamp_path = prefix.join("bpf-linker.stamp");
    let stamp = format!("{LINKER_VERSION} {} {lib_name}", toolchain.commit);
    let bin = cmd::cargo_bin_dir()?.join("bpf-linker");
    let stamp_matches = fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim_end() == stamp);
    if stamp_matches && linker_runs(&bin) {
        say(
            "bpf-linker",
            &format!("{LINKER_VERSION} already built against {lib_name}"),
        );
        warn_if_shadowed(&bin, path);
        return Ok(());
    }

    say(
        "bpf-linker",
        &format!("building {LINKER_VERSION} against {lib_name} (takes about a minute)"),
    );
    if stamp_path.exists() {
        fs::remove_file(&stamp_path)
            .with_context(|| format!("could not remove the stale {}", stamp_path.display()))?;
    }
    let mut install = Command::new("cargo");
    // A host tool: the stable toolchain, no flags or target dir from the workspace, and a
    // working directory outside the workspace so its .cargo/config.toml does not apply.
    cmd::scrub_toolchain_env(&mut install);
    install
        .current_dir(&prefix)
        .env("PATH", path)
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", toolchain.llvm_major()));
    cmd::run(&mut install).context(
        "building bpf-linker failed: read the llvm-sys errors above; the libLLVM symlinks are in \
         ~/.local/share/observer/llvm-prefix/lib",
    )?;
    if !linker_runs(&bin) {
        bail!(
            "bpf-linker was installed but `{} --version` fails: check `ldd {0}`",
            bin.display()
        );
    }
    fs::write(&stamp_path, &stamp)
        .with_context(|| format!("could not write {}", stamp_path.display()))?;
    say(
        "bpf-linker",
        &format!("{LINKER_VERSION} installed in {}", bin.display()),
    );
    warn_if_shadowed(&bin, path);
    Ok(())
}

/// `<sysroot>/lib/libLLVM.so.*` (not the `libLLVM-N-rust-….so` twin).
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("could not list {}", lib.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("libLLVM.so.")
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "{} has no libLLVM.so.*: bpf-linker needs a nightly that ships its libLLVM",
            lib.display()
        )
    })
}

/// `<dir>/libLLVM.so` and `<dir>/<lib_name>` → the toolchain's libLLVM.
fn link_libllvm(dir: &Path, libllvm: &Path, lib_name: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    for name in ["libLLVM.so", lib_name] {
        let link = dir.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link)
                .with_context(|| format!("could not replace {}", link.display()))?;
        }
        symlink(libllvm, &link).with_context(|| {
            format!("could not link {} to {}", link.display(), libllvm.display())
        })?;
    }
    Ok(())
}

fn linker_runs(bin: &Path) -> bool {
    cmd::probe(Command::new(bin).arg("--version")).is_some_and(|out| out.contains(LINKER_VERSION))
}

/// rustc finds `bpf-linker` on PATH; say so when another one comes first.
fn warn_if_shadowed(bin: &Path, path: &OsStr) {
    if let Some(found) = cmd::which("bpf-linker", path)
        && found != bin
    {
        eprintln!(
            "warning: {} comes before {} on PATH and will be used instead",
            found.display(),
            bin.display()
        );
    }
}
