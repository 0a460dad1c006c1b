//! The workspace: where it is, where cargo puts its output, and building `observer`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap::Tools, cmd};

/// The workspace root: the parent of this crate's directory.
pub fn root() -> Result<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask's manifest directory has no parent: run xtask from the observer workspace")
}

/// Builds `observer` in release mode and returns the absolute path of the binary.
pub fn build_observer(tools: &Tools) -> Result<PathBuf> {
    let root = root()?;
    cmd::run(
        tools
            .cargo(root)
            .args(["build", "--release", "--package", "observer"]),
    )
    .context("building observer failed: fix the compiler errors above and rerun")?;
    let bin = target_dir(tools)?.join("release").join("observer");
    if !bin.is_file() {
        bail!("cargo built observer but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// The workspace's target directory, as `cargo metadata` reports it (it honours
/// `CARGO_TARGET_DIR` and `build.target-dir`).
pub fn target_dir(tools: &Tools) -> Result<PathBuf> {
    let root = root()?;
    let json =
        cmd::probe(
            tools
                .cargo(root)
                .args(["metadata", "--format-version", "1", "--no-deps"]),
        )
        .context(
            "`cargo metadata --format-version 1 --no-deps` failed: run it by hand to see why",
        )?;
    let dir = json_string_field(&json, "target_directory")
        .context("`cargo metadata` printed no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The value of the first `"key":"…"` string field in compact JSON (what cargo prints).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let start = json.find(&pattern)? + pattern.len();
    let mut chars = json[start..].trim_start().strip_prefix('"')?.chars();
    let mut value = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_target_directory() {
        let json = r#"{"packages":[],"target_directory":"/w/t\"x\\y\u00e9","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some("/w/t\"x\\y\u{e9}")
        );
        assert_eq!(json_string_field(json, "missing"), None);
    }

    #[test]
    fn root_holds_the_workspace_manifest() -> Result<()> {
        assert!(root()?.join("Cargo.toml").is_file());
        Ok(())
    }
}
