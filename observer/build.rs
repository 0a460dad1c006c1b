//! Builds the eBPF object (observer-ebpf) with the pinned nightly toolchain and embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_BPF_TOOLCHAIN");
    let toolchain =
        std::env::var("OBSERVER_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".to_owned());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("observer/ has a parent directory")?
        .join("observer-ebpf");
    let root = root.to_str().context("the workspace path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "observer-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; run `cargo xtask bootstrap` to install nightly, rust-src and bpf-linker")
}
