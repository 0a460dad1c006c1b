//! Finding the TLS libraries to probe: the standard paths, every file mapped by a running
//! process (`/proc/PID/maps`, opened through `/proc/PID/root` so that other mount namespaces
//! and containers work), and executables that link a library statically. Files are told apart
//! by device and inode: uprobes attach to a file, so one attachment covers every process that
//! maps it, now or later.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LibKind {
    /// libssl: the handshake functions.
    OpenSsl,
    GnuTls,
    /// An executable with OpenSSL linked in statically (both sets of symbols).
    StaticOpenSsl,
}

/// A library file to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibFile {
    /// A path this process can open.
    pub path: PathBuf,
    pub kind: LibKind,
    /// "openssl/3.0.19", "gnutls/3.7.9".
    pub name: String,
}

/// Executables larger than this are not searched for a static OpenSSL (each inode is read
/// once).
const MAX_EXE_BYTES: u64 = 64 << 20;

const STANDARD_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

/// What a mapped file's name says it is.
#[must_use]
pub fn kind_of(file_name: &str) -> Option<LibKind> {
    if file_name.starts_with("libssl.so.3") {
        Some(LibKind::OpenSsl)
    } else if file_name.starts_with("libgnutls.so.30") {
        Some(LibKind::GnuTls)
    } else {
        None
    }
}

/// The library paths in one `/proc/PID/maps` text.
#[must_use]
pub fn mapped_libraries(maps: &str) -> Vec<(&str, LibKind)> {
    let mut out: Vec<(&str, LibKind)> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(kind) = kind_of(name)
            && !out.iter().any(|(p, _)| *p == path)
        {
            out.push((path, kind));
        }
    }
    out
}

/// Remembers which files were already found, by (device, inode).
#[derive(Default)]
pub struct Finder {
    seen: HashSet<(u64, u64)>,
}

impl Finder {
    /// New library files at the standard paths and mapped by any running process. Executables
    /// are not searched for a static OpenSSL here (reading every one at start-up takes seconds);
    /// `scan_pid` does it for processes that start later.
    pub fn scan_all(&mut self) -> Vec<LibFile> {
        let mut out = Vec::new();
        for dir in STANDARD_DIRS {
            for name in ["libssl.so.3", "libgnutls.so.30"] {
                let path = Path::new(dir).join(name);
                if let Some(kind) = kind_of(name) {
                    self.add(path, kind, &mut out);
                }
            }
        }
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    self.scan_maps(pid, &mut out);
                }
            }
        }
        out
    }

    /// New library files mapped by one process, or its executable when OpenSSL is linked into
    /// it statically.
    pub fn scan_pid(&mut self, pid: u32) -> Vec<LibFile> {
        let mut out = Vec::new();
        self.scan_maps(pid, &mut out);
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if let Ok(meta) = fs::metadata(&exe)
            && self.seen.insert((meta.dev(), meta.ino()))
            && meta.len() <= MAX_EXE_BYTES
            && let Ok(bytes) = fs::read(&exe)
            && exports(&bytes, b"SSL_do_handshake")
        {
            let name = version_in(&bytes, b"OpenSSL ")
                .map_or_else(|| "openssl".to_owned(), |v| format!("openssl/{v}"));
            // A stable path: /proc/PID/exe stays valid only while the process lives.
            let path =
                fs::read_link(&exe).map_or(exe, |p| root.join(p.strip_prefix("/").unwrap_or(&p)));
            out.push(LibFile {
                path,
                kind: LibKind::StaticOpenSsl,
                name,
            });
        }
        out
    }

    fn scan_maps(&mut self, pid: u32, out: &mut Vec<LibFile>) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            for (path, kind) in mapped_libraries(&maps) {
                self.add(root.join(path.trim_start_matches('/')), kind, out);
            }
        }
    }

    fn add(&mut self, path: PathBuf, kind: LibKind, out: &mut Vec<LibFile>) {
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        if !self.seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        let name = library_name(&path, kind);
        out.push(LibFile { path, kind, name });
    }
}

/// A symbol name followed by NUL in the file: cheap, and good enough to decide whether to try
/// an attach (which resolves the symbol properly and fails if it is absent).
fn exports(bytes: &[u8], symbol: &[u8]) -> bool {
    bytes
        .windows(symbol.len() + 2)
        .any(|w| w[0] == 0 && &w[1..=symbol.len()] == symbol && w[symbol.len() + 1] == 0)
}

/// "openssl/3.0.19": OpenSSL's version string lives in libcrypto, next to libssl.
fn library_name(path: &Path, kind: LibKind) -> String {
    let (family, marker, file) = match kind {
        LibKind::GnuTls => ("gnutls", &b"GnuTLS "[..], path.to_path_buf()),
        _ => (
            "openssl",
            &b"OpenSSL "[..],
            path.with_file_name("libcrypto.so.3"),
        ),
    };
    fs::read(&file)
        .ok()
        .and_then(|bytes| version_in(&bytes, marker))
        .map_or_else(|| family.to_owned(), |v| format!("{family}/{v}"))
}

/// The first "MARKER d.d.d" in `bytes`: the version after the marker.
#[must_use]
pub fn version_in(bytes: &[u8], marker: &[u8]) -> Option<String> {
    let mut from = 0;
    while let Some(at) = bytes[from..]
        .windows(marker.len())
        .position(|w| w == marker)
    {
        let start = from + at + marker.len();
        let digits: Vec<u8> = bytes[start..]
            .iter()
            .take(16)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        if digits.first().is_some_and(u8::is_ascii_digit) && digits.contains(&b'.') {
            return String::from_utf8(digits).ok();
        }
        from = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libraries_in_maps() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fe:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r--p 00000000 fe:01 124 /opt/x/libcrypto.so.3
7f0000005000-7f0000006000 r--p 00000000 fe:01 125 /usr/lib/libgnutls.so.30.34.3
7f0000007000-7f0000008000 rw-p 00000000 00:00 0
7f0000009000-7f000000a000 r--p 00000000 fe:01 126 /usr/lib/libssl3.so
";
        assert_eq!(
            mapped_libraries(maps),
            vec![
                ("/usr/lib/x86_64-linux-gnu/libssl.so.3", LibKind::OpenSsl),
                ("/usr/lib/libgnutls.so.30.34.3", LibKind::GnuTls),
            ]
        );
    }

    #[test]
    fn reads_versions() {
        assert_eq!(
            version_in(b"\0OpenSSL %s\0OpenSSL 3.0.19 27 Jan 2026\0", b"OpenSSL "),
            Some("3.0.19".to_owned())
        );
        assert_eq!(
            version_in(b"Enabled GnuTLS 3.7.9 logging...", b"GnuTLS "),
            Some("3.7.9".to_owned())
        );
        assert_eq!(version_in(b"OpenSSL x", b"OpenSSL "), None);
        assert!(exports(b"\0SSL_do_handshake\0", b"SSL_do_handshake"));
        assert!(!exports(b"\0SSL_do_handshake_x\0", b"SSL_do_handshake"));
    }
}
