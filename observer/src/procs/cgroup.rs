//! Cgroups: the path behind a cgroup id, and the container id inside a path.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::ProcsError;

/// Maps cgroup v2 ids to paths relative to the cgroup2 mount (`/` is the root).
///
/// A cgroup's id is the inode number of its directory, which is what
/// `bpf_get_current_cgroup_id` returns. The tree is walked on the first lookup and again when
/// an unknown id is asked for, at most once per interval (a second by default), so a burst of
/// events from a brand-new cgroup costs one walk, not one per event. Ids are never reused, so
/// entries of removed cgroups are harmless until the next walk drops them.
#[derive(Debug)]
pub struct CgroupIndex {
    root: PathBuf,
    paths: HashMap<u64, String>,
    walked_at: Option<Instant>,
    min_interval: Duration,
}

impl CgroupIndex {
    /// An index of the cgroup2 file system found in /proc/self/mounts (on a hybrid host,
    /// `/sys/fs/cgroup/unified`). Nothing is walked yet.
    ///
    /// # Errors
    /// When /proc/self/mounts cannot be read or lists no cgroup2 mount.
    pub fn new() -> Result<Self, ProcsError> {
        let path = Path::new("/proc/self/mounts");
        let mounts = fs::read_to_string(path).map_err(|err| ProcsError::Read {
            path: path.to_owned(),
            err,
        })?;
        let root = cgroup2_mount(&mounts).ok_or(ProcsError::NoCgroup2)?;
        Ok(Self::at(root, Duration::from_secs(1)))
    }

    /// An index of the cgroup2 tree mounted at `root`, walked at most once per `min_interval`.
    #[must_use]
    pub fn at(root: PathBuf, min_interval: Duration) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            walked_at: None,
            min_interval,
        }
    }

    /// Where the cgroup2 file system is mounted.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id`, such as `/system.slice/nginx.service`; `None` when no such
    /// cgroup exists (or it appeared less than the interval after the last walk).
    pub fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if self
            .walked_at
            .is_some_and(|at| at.elapsed() < self.min_interval)
        {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    /// Rebuilds the map: one `readdir` per cgroup, ids from the directory entries (no `stat`).
    fn walk(&mut self) {
        self.walked_at = Some(Instant::now());
        self.paths.clear();
        if let Ok(meta) = fs::metadata(&self.root) {
            self.paths.insert(meta.ino(), "/".to_owned());
        }
        let mut pending = vec![(self.root.clone(), String::new())];
        while let Some((dir, relative)) = pending.pop() {
            // Cgroups removed during the walk are simply skipped.
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = format!("{relative}/{}", entry.file_name().to_string_lossy());
                self.paths.insert(entry.ino(), path.clone());
                pending.push((entry.path(), path));
            }
        }
    }
}

/// The first cgroup2 mount point in the text of /proc/self/mounts.
fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(target)))
    })
}

/// Undoes the octal escapes of /proc/self/mounts (`\040` for a space, and so on).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prefixes of the cgroups that runtimes name after a container: systemd scopes such as
/// `docker-<id>.scope`, or cgroupfs directories such as `crio-<id>`. The runtimes' own
/// monitor processes (`libpod-conmon-<id>`, `crio-conmon-<id>`) do not match, because what
/// follows the prefix is then not an id.
const PREFIXES: [&str; 5] = ["docker-", "cri-containerd-", "crio-", "libpod-", "nerdctl-"];

/// The 64-hex container id in a cgroup v2 path, or `None` outside a container.
///
/// Recognised: docker (`/docker/<id>`, `docker-<id>.scope`), containerd and CRI
/// (`cri-containerd-<id>.scope`, `/kubepods…/<id>`), cri-o (`crio-<id>.scope`), podman
/// (`libpod-<id>.scope`, also with the `/container` child podman adds) and nerdctl. The
/// innermost match wins, for a container inside a container. A bare 64-hex directory
/// elsewhere is not taken for a container: it could be anything.
#[must_use]
pub fn container_id(cgroup_path: &str) -> Option<String> {
    let segments: Vec<&str> = cgroup_path.split('/').filter(|s| !s.is_empty()).collect();
    segments.iter().enumerate().rev().find_map(|(i, segment)| {
        let unit = segment.strip_suffix(".scope").unwrap_or(segment);
        let prefixed = PREFIXES
            .iter()
            .find_map(|prefix| unit.strip_prefix(prefix).filter(|id| is_id(id)));
        let bare = is_id(segment)
            && segments[..i]
                .iter()
                .any(|parent| *parent == "docker" || parent.starts_with("kubepods"));
        prefixed.or(bare.then_some(*segment)).map(str::to_owned)
    })
}

fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_of_the_common_runtimes() {
        let pod = "kubepods-burstable-pod5c0e5a3b_8f1d_4a8e_9e4b_1e2f3a4b5c6d.slice";
        let table: Vec<(String, Option<&str>)> = vec![
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/docker/{ID}"), Some(ID)),
            (format!("/docker/{ID}/init.scope"), Some(ID)),
            (format!("/docker/{ID}/docker/{ID2}"), Some(ID2)),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/{pod}/cri-containerd-{ID}.scope"),
                Some(ID),
            ),
            (
                format!("/kubepods/besteffort/pod5c0e5a3b-8f1d-4a8e-9e4b-1e2f3a4b5c6d/{ID}"),
                Some(ID),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/{pod}/crio-{ID}.scope"),
                Some(ID),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/{pod}/crio-conmon-{ID}.scope"),
                None,
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/{pod}/docker-{ID}.scope"),
                Some(ID),
            ),
            (format!("/machine.slice/libpod-{ID}.scope"), Some(ID)),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(ID),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some(ID),
            ),
            (format!("/system.slice/nerdctl-{ID}.scope"), Some(ID)),
            (format!("/kubepods.slice/{pod}"), None),
            ("/user.slice/user-1000.slice/session-2.scope".into(), None),
            ("/system.slice/docker.service".into(), None),
            ("/system.slice/containerd.service".into(), None),
            ("/system.slice/sshd.service".into(), None),
            ("/process_api/834e2acb5752b274c058fda1e08296a9".into(), None),
            (format!("/system.slice/docker-{}.scope", &ID[..12]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/system.slice/{ID}"), None),
            (format!("/docker/{ID}x"), None),
            ("/".into(), None),
            (String::new(), None),
        ];
        for (path, expected) in &table {
            assert_eq!(container_id(path).as_deref(), *expected, "{path}");
        }
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let escaped = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(escaped), Some("/mnt/my cgroups".into()));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(unescape_mount("a\\134b\\0"), "a\\b\\0");
    }

    /// A cgroup created for the test and removed on drop.
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn ids_map_back_to_paths() {
        let mut index = CgroupIndex::new().expect("a cgroup2 mount");
        let root = index.root().to_owned();
        let root_id = fs::metadata(&root).expect("root").ino();
        assert_eq!(index.lookup(root_id).as_deref(), Some("/"));

        let own = super::super::cgroup_v2(&fs::read_to_string("/proc/self/cgroup").expect("read"))
            .expect("a cgroup v2 line");
        let own_dir = root.join(own.trim_start_matches('/'));
        let own_id = fs::metadata(&own_dir).expect("own cgroup").ino();
        assert_eq!(index.lookup(own_id), Some(own.clone()));

        // A new cgroup is found by the next walk, unless the last one is too recent.
        let name = format!("observer-test-{}", std::process::id());
        let relative = if own == "/" {
            format!("/{name}")
        } else {
            format!("{own}/{name}")
        };
        let dir = TestCgroup(own_dir.join(&name));
        fs::create_dir(&dir.0).expect("mkdir a cgroup (needs root)");
        let id = fs::metadata(&dir.0).expect("new cgroup").ino();
        let mut eager = CgroupIndex::at(root.clone(), Duration::ZERO);
        let mut lazy = CgroupIndex::at(root, Duration::from_hours(1));
        assert_eq!(eager.lookup(root_id).as_deref(), Some("/"));
        assert_eq!(lazy.lookup(u64::MAX), None); // walks once
        assert_eq!(eager.lookup(id), Some(relative.clone()));
        assert_eq!(lazy.lookup(id), Some(relative), "created before the walk");

        let late = TestCgroup(dir.0.join("late"));
        fs::create_dir(&late.0).expect("mkdir");
        let late_id = fs::metadata(&late.0).expect("late cgroup").ino();
        assert_eq!(
            lazy.lookup(late_id),
            None,
            "no second walk within the interval"
        );
        assert!(
            eager
                .lookup(late_id)
                .is_some_and(|p| p.ends_with(&format!("{name}/late")))
        );
    }
}
