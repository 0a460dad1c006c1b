//! The guest's userland: a minimal Debian 12 made by debootstrap with what the integration
//! suite runs (python3 for the peers, ip, ss, nft, setpriv, mount, dd, sysctl, modprobe, and the
//! traffic tools the host's test packages add), packed
//! once as a compressed cpio archive and cached under a key made from everything that shapes it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use super::{Cache, fnv64, pack_dir, say};
use crate::cmd;

const SUITE: &str = "bookworm";

/// Packages added to debootstrap's minbase (which already has coreutils, mount, dash).
pub const GUEST_PACKAGES: &[&str] = &[
    "python3",    // the scripted peers (tests/peers), json and ctypes included
    "iproute2",   // ip netns, ss
    "nftables",   // nft: packet drops in tests
    "util-linux", // setpriv, mount, umount
    "procps",     // sysctl
    "kmod",       // modprobe, and the kernel's module autoloading
    // What the host's test packages (xtask/src/packages.rs) give tests, so that a test written
    // on the host runs unchanged in the guest.
    "iptables",
    "curl",
    "openssl",
    "socat",
    "hping3",
    "nginx-light",
    "syslog-ng-core",
    "gnutls-bin", // gnutls-cli and gnutls-serv (TLS tests)
    "tmux",       // the `observer top` test's terminal
    "bpftool",    // the TLS privacy test dumps the maps
    // The TLS tests compile a client statically against OpenSSL (libssl.a, libcrypto.a).
    "gcc",
    "libc6-dev",
    "libssl-dev",
];

/// Removed before packing: never read by the guest, a third of the tree.
const STRIP: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/lib/x86_64-linux-gnu/gconv",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
];

/// Bump when the way the tree is built changes.
const RECIPE: u32 = 1;

/// The cache key of the rootfs: suite, package list, stripped paths and recipe.
pub fn key() -> u64 {
    fnv64(&format!(
        "{SUITE}|minbase|{}|{}|{RECIPE}",
        GUEST_PACKAGES.join(","),
        STRIP.join(",")
    ))
}

/// The packed rootfs, built by debootstrap when the cache has none for this key.
pub fn ensure(cache: &Cache) -> Result<PathBuf> {
    let name = format!("rootfs-{:016x}.cpio.zst", key());
    let out = cache.dir.join(&name);
    if out.is_file() {
        say(&format!("guest rootfs: cached ({name})"));
        return Ok(out);
    }
    remove_stale(cache, &name);
    let work = cache.dir.join("rootfs.work");
    super::remove_dir(&work)?;
    let tree = work.join("root");
    say(&format!(
        "guest rootfs: debootstrap {SUITE} with {} (about 90 s, once)",
        GUEST_PACKAGES.join(" ")
    ));
    let result = cmd::run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tree),
    )
    .context("debootstrap failed: it needs the debootstrap package and the Debian mirror");
    if let Err(err) = result {
        // It may leave /proc or /sys mounted inside the tree.
        let _ = super::remove_dir(&work);
        return Err(err);
    }
    for path in STRIP {
        super::remove_dir(&tree.join(path))?;
    }
    pack_dir(&tree, &out)?;
    super::remove_dir(&work)?;
    Ok(out)
}

/// Deletes rootfs archives of other keys: each is about 40 MB.
fn remove_stale(cache: &Cache, keep: &str) {
    let Ok(dir) = fs::read_dir(&cache.dir) else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("rootfs-") && name.ends_with(".cpio.zst") && name != keep {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_package_list() {
        assert_eq!(key(), key());
        assert_ne!(
            key(),
            fnv64(&format!(
                "{SUITE}|minbase|{}|{}|{RECIPE}",
                GUEST_PACKAGES[1..].join(","),
                STRIP.join(",")
            ))
        );
    }
}
