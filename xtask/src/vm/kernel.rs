//! Debian's cloud kernels: which package is the newest of a series, fetching and unpacking it
//! into the cache (without installing it on the host), and the few modules the guest loads.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{Cache, fnv64, pack_dir, say};
use crate::cmd;

/// Modules the guest loads at boot, with what they depend on. The suite's nft rules need
/// `nf_tables`, which Debian builds as a module (`CONFIG_NF_TABLES=m` on 6.1 and 6.12; built into
/// the host's 6.18). The rest are what tests may use for links, delays and drops (veth, netem,
/// the ingress qdisc, `cls_bpf`, iptables) and `tcp_diag` (observer's `sock_diag` listings:
/// seeding and `observer snapshot`); lo, network namespaces, tmpfs and BPF are built in.
pub const GUEST_MODULES: &[&str] = &[
    "nf_tables",
    "tcp_diag",
    "veth",
    "sch_netem",
    "sch_ingress",
    "cls_bpf",
    "iptable_filter",
];

/// Modules copied into the guest but loaded only on demand (the kernel's autoloading runs the
/// guest's modprobe): nft expressions and families that are not in `nf_tables` itself.
pub const ON_DEMAND_MODULES: &[&str] = &[
    "nft_ct",
    "nft_limit",
    "nft_quota",
    "nft_reject_inet",
    "nft_compat",
    "nft_numgen",
];

/// Files depmod and modprobe read besides the modules themselves.
const MODULE_INDEXES: &[&str] = &[
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// A kernel ready to boot: its image and an initramfs part with its modules.
pub struct Fetched {
    pub package: String,
    /// The Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules_cpio: PathBuf,
}

/// The newest `linux-image-<series>.…-cloud-amd64` package apt knows, updating its lists once
/// when it knows none.
pub fn newest_package(series: &str) -> Result<String> {
    let search = || -> Result<Option<String>> {
        let pattern = format!("^linux-image-{}\\.", series.replace('.', "\\."));
        let out = cmd::probe(Command::new("apt-cache").args(["search", "--names-only", &pattern]))
            .context("`apt-cache search` failed: the kernel matrix needs Debian's apt")?;
        Ok(newest_in(&out, series))
    };
    if let Some(package) = search()? {
        return Ok(package);
    }
    say(&format!(
        "no {series} cloud kernel in apt's lists: updating them"
    ));
    cmd::run(Command::new("apt-get").arg("update"))
        .context("`apt-get update` failed: check access to the Debian mirror")?;
    search()?.with_context(|| {
        format!("apt knows no linux-image-{series}.*-cloud-amd64 package (is this Debian 12?)")
    })
}

/// The newest cloud kernel of `series` in `apt-cache search` output, by numeric version.
pub fn newest_in(listing: &str, series: &str) -> Option<String> {
    let prefix = format!("linux-image-{series}.");
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix) && name.ends_with("-cloud-amd64"))
        .max_by_key(|name| numbers(name))
        .map(str::to_owned)
}

/// The numbers in a package name, in order: `linux-image-6.12.117+deb12-cloud-amd64` gives
/// 6, 12, 117, 12, 64.
fn numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// Fetches `package` into the cache once: its image, release and version, and an initramfs part
/// with [`GUEST_MODULES`] and their dependencies (decompressed, with depmod's indexes).
pub fn fetch(cache: &Cache, package: &str) -> Result<Fetched> {
    let dir = cache.dir.join("kernels").join(package);
    if !dir.join("vmlinuz").is_file() {
        download(&dir, package)?;
    }
    let read = |name: &str| -> Result<String> {
        let path = dir.join(name);
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_owned())
    };
    let release = read("release")?;
    let modules_cpio = dir.join(format!(
        "modules-{:016x}.cpio.zst",
        fnv64(&format!(
            "{}|{}",
            GUEST_MODULES.join(","),
            ON_DEMAND_MODULES.join(",")
        ))
    ));
    if !modules_cpio.is_file() {
        build_modules(&dir, &release, &modules_cpio)?;
    }
    Ok(Fetched {
        package: package.to_owned(),
        version: read("version")?,
        release,
        vmlinuz: dir.join("vmlinuz"),
        modules_cpio,
    })
}

/// `apt-get download`, keeping the .deb (a changed module list re-reads it) and the image.
fn download(dir: &Path, package: &str) -> Result<()> {
    // Not with_extension: the package name has dots of its own.
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    super::remove_dir(&partial)?;
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    say(&format!("downloading {package}"));
    let get = |update_first: bool| -> Result<()> {
        if update_first {
            cmd::run(Command::new("apt-get").arg("update"))?;
        }
        cmd::run(
            Command::new("apt-get")
                // The cache is root's; apt's sandbox user could not write there.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
                .current_dir(&partial),
        )
    };
    // Old lists may name a file the mirror has replaced: update them once and retry.
    get(false)
        .or_else(|_| get(true))
        .with_context(|| format!("`apt-get download {package}` failed"))?;
    let deb = deb_in(&partial)?;
    let version = cmd::probe(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )
    .context("`dpkg-deb -f` could not read the package's version")?;
    let tree = partial.join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let release = only_entry(&tree.join("lib/modules"))?;
    fs::copy(
        tree.join("boot").join(format!("vmlinuz-{release}")),
        partial.join("vmlinuz"),
    )
    .context("the package has no /boot/vmlinuz-<release>")?;
    fs::rename(&deb, partial.join("kernel.deb"))?;
    fs::write(partial.join("release"), format!("{release}\n"))?;
    fs::write(partial.join("version"), version)?;
    super::remove_dir(&tree)?;
    super::remove_dir(dir)?;
    fs::rename(&partial, dir).with_context(|| format!("cannot move into {}", dir.display()))
}

/// Unpacks the kept .deb, resolves the modules' dependencies with depmod, and packs the closure.
fn build_modules(dir: &Path, release: &str, out: &Path) -> Result<()> {
    let work = dir.join("modules.work");
    super::remove_dir(&work)?;
    let tree = work.join("tree");
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(dir.join("kernel.deb"))
            .arg(&tree),
    )?;
    cmd::run(Command::new("depmod").arg("-b").arg(&tree).arg(release))
        .context("depmod failed: install kmod")?;
    let src = tree.join("lib/modules").join(release);
    let deps =
        fs::read_to_string(src.join("modules.dep")).context("depmod wrote no modules.dep")?;
    let mut wanted = closure(&deps, GUEST_MODULES)?;
    wanted.extend(closure(&deps, ON_DEMAND_MODULES)?);
    // /lib is a symlink to usr/lib in the rootfs: the archive must not replace it.
    let stage = work.join("stage");
    let dst = stage.join("usr/lib/modules").join(release);
    for module in &wanted {
        let (target, compressed) = match module.strip_suffix(".xz") {
            Some(plain) => (dst.join(plain), true),
            None => (dst.join(module), false),
        };
        fs::create_dir_all(target.parent().context("module path has no parent")?)?;
        if compressed {
            let file = fs::File::create(&target)?;
            let status = Command::new("xz")
                .arg("-dc")
                .arg(src.join(module))
                .stdout(file)
                .status()
                .context("could not run xz: install xz-utils")?;
            if !status.success() {
                bail!("`xz -dc {module}` failed ({status})");
            }
        } else {
            fs::copy(src.join(module), &target)?;
        }
    }
    for index in MODULE_INDEXES {
        if src.join(index).is_file() {
            fs::copy(src.join(index), dst.join(index))?;
        }
    }
    // depmod reads <base>/lib/modules: point it at usr/lib for the run, then drop the link.
    let lib = stage.join("lib");
    std::os::unix::fs::symlink("usr/lib", &lib)?;
    cmd::run(Command::new("depmod").arg("-b").arg(&stage).arg(release))?;
    fs::remove_file(&lib)?;
    pack_dir(&stage, out)?;
    super::remove_dir(&work)
}

/// `wanted` module names and everything they depend on, as paths in `modules.dep`.
pub fn closure(modules_dep: &str, wanted: &[&str]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for name in wanted {
        let line = modules_dep
            .lines()
            .find(|line| {
                line.split(':')
                    .next()
                    .is_some_and(|path| module_name(path) == *name)
            })
            .with_context(|| format!("module {name} is not in this kernel's modules.dep"))?;
        let (path, deps) = line.split_once(':').unwrap_or((line, ""));
        out.insert(path.to_owned());
        out.extend(deps.split_whitespace().map(str::to_owned));
    }
    Ok(out)
}

/// `kernel/net/netfilter/nf_tables.ko.xz` → `nf_tables`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file)
}

fn deb_in(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("the kernel package has no {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release in {}: {names:?}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64-dbg - Linux 6.1 for x86-64 cloud (debug symbols)
linux-image-6.1.0-55-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.101+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
";

    #[test]
    fn picks_the_newest_cloud_kernel_numerically() {
        assert_eq!(
            newest_in(SEARCH, "6.1").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            newest_in(SEARCH, "6.12").as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(newest_in(SEARCH, "6.6"), None);
    }

    #[test]
    fn module_closure_follows_modules_dep() -> Result<()> {
        let dep = "kernel/lib/libcrc32c.ko.xz:\n\
                   kernel/net/netfilter/nfnetlink.ko.xz:\n\
                   kernel/net/netfilter/nf_tables.ko.xz: kernel/net/netfilter/nfnetlink.ko.xz kernel/lib/libcrc32c.ko.xz\n\
                   kernel/net/netfilter/nft_compat.ko.xz: kernel/net/netfilter/nf_tables.ko.xz\n";
        let got: Vec<String> = closure(dep, &["nf_tables"])?.into_iter().collect();
        assert_eq!(
            got,
            [
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/net/netfilter/nf_tables.ko.xz",
                "kernel/net/netfilter/nfnetlink.ko.xz"
            ]
        );
        assert!(closure(dep, &["veth"]).is_err());
        Ok(())
    }
}
