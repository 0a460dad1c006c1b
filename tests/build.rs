//! Embeds every `docs/schema/*.json` in the test harness, so that tests validate observer's
//! output wherever their binaries run (the QEMU guests have no source tree).

use std::{env, fmt::Write as _, fs, path::PathBuf};

fn main() {
    let dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("../docs/schema");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("docs/schema/")
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "json").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    let mut out = String::from(
        "/// (name, text) of every schema in docs/schema/.\npub const SCHEMAS: &[(&str, &str)] = &[\n",
    );
    for name in &names {
        let path = dir.join(format!("{name}.json"));
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("out dir")).join("schemas.rs");
    fs::write(dest, out).expect("write schemas.rs");
}
