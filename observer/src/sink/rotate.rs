//! Size-based rotation of a file output: `file:///PATH?max_size=1MiB&max_backups=5&gzip=true`.
//!
//! The rule, line by line: a line goes into PATH unless PATH already holds something and the
//! line would make it larger than `max_size`; then PATH is rotated first. So every file holds
//! whole lines and at most `max_size` bytes, except that a line longer than `max_size` gets a
//! file of its own. PATH's size when it is opened (at start, after SIGHUP) counts.
//!
//! A rotation moves the backups up one (PATH.1 → PATH.2 …) as far as the first free number,
//! so that the oldest, PATH.`max_backups`, is overwritten when all are taken, and a retried
//! rotation moves nothing twice. PATH becomes PATH.1; with gzip it is compressed into
//! PATH.1.gz.tmp, renamed PATH.1.gz once whole, and only then removed: a `.gz` is complete or
//! absent, and no uncompressed copy is left behind. Then a new PATH, 0640.
//!
//! A file someone else moved away (logrotate, before its SIGHUP) is theirs: it is not rotated,
//! a new PATH is started. A step that fails returns an error naming it; the writer warns once
//! and retries the batch, and the rotation resumes at the step that failed. No line goes into
//! a file that is no longer PATH.
//!
//! Compression runs on this output's writer thread, never in capture. It costs this output
//! some 16 ms a MiB of records (gzip level 6, about 19:1; measured on the development machine)
//! and an fsync per rotation: a 100 MiB `max_size` holds its lines in its queue for some 2 s,
//! which drops and counts them only if it fills meanwhile. Capture and the other outputs do
//! not wait.

use std::{
    ffi::OsString,
    fs::{self, File},
    io::{self, BufWriter, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use flate2::{Compression, write::GzEncoder};

use super::{file::append_readable, spec::Rotate};

pub struct Rotating {
    path: PathBuf,
    rule: Rotate,
    file: File,
    /// Bytes in `file`.
    size: u64,
    /// The last write ended inside a line, whose rest goes into the same file.
    mid_line: bool,
    stage: Stage,
}

/// Where a rotation is: one whose step failed goes on from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `file` is PATH.
    Writing,
    /// PATH.1.gz holds `file`'s lines; PATH is yet to be removed.
    Compressed,
    /// `file` is not PATH any more: a new PATH is to be opened.
    Moved,
}

impl Rotating {
    /// # Errors
    /// When PATH cannot be opened or is not a regular file.
    pub fn open(path: &Path, rule: Rotate) -> io::Result<Self> {
        let (file, size) = open(path)?;
        Ok(Self {
            path: path.to_owned(),
            rule,
            file,
            size,
            mid_line: false,
            stage: Stage::Writing,
        })
    }

    /// Writes the whole lines of `buf` that fit, rotating first when none does.
    ///
    /// # Errors
    /// A failed write or rotation step, with what failed.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stage != Stage::Writing {
            self.rotate()?;
        }
        let mut take = self.fits(buf);
        if take == 0 {
            self.rotate()?;
            take = self.fits(buf);
        }
        let n = self.file.write(&buf[..take])?;
        self.size += n as u64;
        if n > 0 {
            self.mid_line = buf[n - 1] != b'\n';
        }
        Ok(n)
    }

    /// SIGHUP: PATH by its name again, its size counted.
    ///
    /// # Errors
    /// When it cannot be opened; the file open stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.stage != Stage::Writing {
            return self.rotate();
        }
        (self.file, self.size) = open(&self.path)?;
        self.mid_line = false;
        Ok(())
    }

    /// How much of `buf` goes into the file as it is: 0 when it must be rotated first.
    fn fits(&self, buf: &[u8]) -> usize {
        let room = self.rule.max_bytes.saturating_sub(self.size);
        let Some(room) = usize::try_from(room).ok().filter(|&r| r < buf.len()) else {
            return buf.len();
        };
        if let Some(end) = buf[..room].iter().rposition(|&b| b == b'\n') {
            return end + 1;
        }
        if self.size == 0 || self.mid_line {
            // A line longer than max_size, alone; or the rest of one begun here.
            return buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |i| i + 1);
        }
        0
    }

    /// Runs the rotation from its stage to a new PATH.
    fn rotate(&mut self) -> io::Result<()> {
        loop {
            self.stage = match self.stage {
                Stage::Writing if !self.at_path()? => Stage::Moved,
                Stage::Writing => self.archive()?,
                Stage::Compressed => match fs::remove_file(&self.path) {
                    Ok(()) => Stage::Moved,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Stage::Moved,
                    Err(e) => return Err(failed(&format!("remove {}", self.path.display()), &e)),
                },
                Stage::Moved => {
                    (self.file, self.size) = open(&self.path)
                        .map_err(|e| failed(&format!("create {}", self.path.display()), &e))?;
                    self.mid_line = false;
                    self.stage = Stage::Writing;
                    return Ok(());
                }
            };
        }
    }

    /// Whether PATH still names the file open.
    fn at_path(&self) -> io::Result<bool> {
        let ours = self.file.metadata()?;
        match fs::metadata(&self.path) {
            Ok(m) => Ok(m.dev() == ours.dev() && m.ino() == ours.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(failed(&format!("stat {}", self.path.display()), &e)),
        }
    }

    /// Makes room for PATH.1 and moves the file there.
    fn archive(&self) -> io::Result<Stage> {
        self.shift()?;
        if self.rule.gzip {
            self.compress()?;
            return Ok(Stage::Compressed);
        }
        let to = self.backup(1);
        match fs::rename(&self.path, &to) {
            // Moved away meanwhile: the mover's.
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(failed(
                &format!("rename {} to {}", self.path.display(), to.display()),
                &e,
            )),
            _ => Ok(Stage::Moved),
        }
    }

    /// PATH.i → PATH.i+1 below the first free number (or `max_backups`, overwritten).
    fn shift(&self) -> io::Result<()> {
        let mut top = self.rule.max_backups;
        for i in 1..self.rule.max_backups {
            let name = self.backup(i);
            let taken = name
                .try_exists()
                .map_err(|e| failed(&format!("look for {}", name.display()), &e))?;
            if !taken {
                top = i;
                break;
            }
        }
        for i in (1..top).rev() {
            let (from, to) = (self.backup(i), self.backup(i + 1));
            fs::rename(&from, &to).map_err(|e| {
                failed(
                    &format!("rename {} to {}", from.display(), to.display()),
                    &e,
                )
            })?;
        }
        Ok(())
    }

    /// The file into PATH.1.gz, through a temporary name; the temporary is removed on failure.
    fn compress(&self) -> io::Result<()> {
        let done = self.backup(1);
        let tmp = suffixed(&done, ".tmp");
        let gzip = || -> io::Result<()> {
            let out = File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&tmp)?;
            out.set_permissions(fs::Permissions::from_mode(0o640))?;
            let mut gz = GzEncoder::new(
                BufWriter::with_capacity(1 << 16, out),
                Compression::default(),
            );
            let mut src = &self.file;
            src.seek(SeekFrom::Start(0))?;
            io::copy(&mut src, &mut gz)?;
            let out = gz
                .finish()?
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            // A rename that outlives a crash must not name an empty file.
            out.sync_all()?;
            fs::rename(&tmp, &done)
        };
        gzip().map_err(|e| {
            // Frees what a full disk was given.
            let _ = fs::remove_file(&tmp);
            failed(
                &format!("compress {} into {}", self.path.display(), done.display()),
                &e,
            )
        })
    }

    /// PATH.i, or PATH.i.gz.
    fn backup(&self, i: u32) -> PathBuf {
        let gz = if self.rule.gzip { ".gz" } else { "" };
        suffixed(&self.path, &format!(".{i}{gz}"))
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path);
    name.push(suffix);
    name.into()
}

/// PATH, readable (compression reads it back) and its size.
fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = append_readable(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file, and only a regular file can be rotated: drop max_size",
                path.display()
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// The error of a rotation step, for the writer's warning ("cannot write to PATH: …").
fn failed(step: &str, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("rotating it, cannot {step}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io::Read as _, sync::atomic::AtomicU32};

    use super::*;

    /// A fresh directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("obsrot-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).expect("dir");
            Self(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("o")
        }

        /// Each file's name and content (a `.gz` decompressed), and its mode.
        fn files(&self) -> BTreeMap<String, (String, u32)> {
            fs::read_dir(&self.0)
                .expect("read_dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let name = e.file_name().into_string().expect("utf-8");
                    let raw = fs::read(e.path()).expect("read");
                    let text = if Path::new(&name).extension().is_some_and(|x| x == "gz") {
                        let mut text = String::new();
                        flate2::read::GzDecoder::new(&raw[..])
                            .read_to_string(&mut text)
                            .expect("gunzip");
                        text
                    } else {
                        String::from_utf8(raw).expect("utf-8")
                    };
                    let mode = e.metadata().expect("meta").permissions().mode() & 0o777;
                    (name, (text, mode))
                })
                .collect()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rule(max_bytes: u64, max_backups: u32, gzip: bool) -> Rotate {
        Rotate {
            max_bytes,
            max_backups,
            gzip,
        }
    }

    /// As the writer thread does: until all of `buf` is taken.
    fn write_all(out: &mut Rotating, mut buf: &[u8]) {
        while !buf.is_empty() {
            let n = out.write(buf).expect("write");
            assert!(n > 0);
            buf = &buf[n..];
        }
    }

    fn want(files: &[(&str, &str)]) -> BTreeMap<String, (String, u32)> {
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), ((*t).to_owned(), 0o640)))
            .collect()
    }

    const BIG: &str = "a line longer than max_size\n";

    #[test]
    fn rotates_by_the_rule_in_one_batch_or_line_by_line() {
        struct Case {
            name: &'static str,
            rule: Rotate,
            /// Files there before.
            before: &'static [(&'static str, &'static str)],
            lines: &'static [&'static str],
            after: &'static [(&'static str, &'static str)],
        }
        let cases = [
            Case {
                name: "whole lines up to exactly max_size",
                rule: rule(10, 5, false),
                before: &[],
                lines: &["aaaa\n", "bbbb\n", "cc\n"],
                after: &[("o", "cc\n"), ("o.1", "aaaa\nbbbb\n")],
            },
            Case {
                name: "never a line split: one that does not fit starts the next file",
                rule: rule(10, 5, false),
                before: &[],
                lines: &["aaaa\n", "bbb\n", "ccc\n", "d\n"],
                after: &[("o", "ccc\nd\n"), ("o.1", "aaaa\nbbb\n")],
            },
            Case {
                name: "a line longer than max_size gets a file of its own",
                rule: rule(10, 5, false),
                before: &[],
                lines: &["a\n", BIG, "b\n"],
                after: &[("o", "b\n"), ("o.1", BIG), ("o.2", "a\n")],
            },
            Case {
                name: "an existing file's size counts",
                rule: rule(10, 5, false),
                before: &[("o", "12345678\n")],
                lines: &["ab\n"],
                after: &[("o", "ab\n"), ("o.1", "12345678\n")],
            },
            Case {
                name: "the oldest beyond max_backups is deleted",
                rule: rule(4, 2, false),
                before: &[],
                lines: &["l1\n", "l2\n", "l3\n", "l4\n", "l5\n"],
                after: &[("o", "l5\n"), ("o.1", "l4\n"), ("o.2", "l3\n")],
            },
            Case {
                name: "gzip: compressed backups, no uncompressed copy or temporary left",
                rule: rule(4, 2, true),
                before: &[],
                lines: &["l1\n", "l2\n", "l3\n", "l4\n", "l5\n"],
                after: &[("o", "l5\n"), ("o.1.gz", "l4\n"), ("o.2.gz", "l3\n")],
            },
            Case {
                name: "gzip of a line longer than max_size",
                rule: rule(10, 1, true),
                before: &[],
                lines: &[BIG, "b\n"],
                after: &[("o", "b\n"), ("o.1.gz", BIG)],
            },
            Case {
                name: "backups move up only as far as the first free number",
                rule: rule(10, 5, false),
                before: &[("o", "new\n"), ("o.1", "mid\n"), ("o.3", "old\n")],
                lines: &["0123456789\n"],
                after: &[
                    ("o", "0123456789\n"),
                    ("o.1", "new\n"),
                    ("o.2", "mid\n"),
                    ("o.3", "old\n"),
                ],
            },
            Case {
                name: "a file under max_size is not rotated",
                rule: rule(64, 5, true),
                before: &[("o", "kept\n")],
                lines: &["a\n", "b\n"],
                after: &[("o", "kept\na\nb\n")],
            },
        ];
        for case in &cases {
            for batched in [true, false] {
                let dir = Dir::new();
                for (name, text) in case.before {
                    fs::write(dir.0.join(name), text).expect("before");
                    fs::set_permissions(dir.0.join(name), fs::Permissions::from_mode(0o640))
                        .expect("mode");
                }
                let mut out = Rotating::open(&dir.path(), case.rule).expect("open");
                if batched {
                    write_all(&mut out, case.lines.concat().as_bytes());
                } else {
                    for line in case.lines {
                        write_all(&mut out, line.as_bytes());
                    }
                }
                let name = case.name;
                assert_eq!(dir.files(), want(case.after), "{name} (batched: {batched})");
            }
        }
    }

    #[test]
    fn a_failed_rotation_loses_nothing_and_resumes() {
        for gzip in [false, true] {
            let dir = Dir::new();
            let mut out = Rotating::open(&dir.path(), rule(4, 1, gzip)).expect("open");
            write_all(&mut out, b"l1\n");
            // A directory where the backup or its temporary goes: rename or create fails.
            let blocker = dir.0.join(if gzip { "o.1.gz.tmp" } else { "o.1" });
            fs::create_dir(&blocker).expect("blocker");
            fs::write(blocker.join("x"), "").expect("non-empty");
            let err = out.write(b"l2\n").expect_err("the rotation fails");
            let message = if gzip {
                format!(
                    "rotating it, cannot compress {0}/o into {0}/o.1.gz: Is a directory (os error 21)",
                    dir.0.display()
                )
            } else {
                format!(
                    "rotating it, cannot rename {0}/o to {0}/o.1: Is a directory (os error 21)",
                    dir.0.display()
                )
            };
            assert_eq!(err.to_string(), message);
            // Retried, as the writer does, after the cause is gone.
            fs::remove_dir_all(&blocker).expect("unblock");
            write_all(&mut out, b"l2\n");
            let backup = if gzip { "o.1.gz" } else { "o.1" };
            let after = [("o", "l2\n"), (backup, "l1\n")];
            assert_eq!(dir.files(), want(&after), "gzip: {gzip}");
        }
    }

    #[test]
    fn a_file_moved_away_is_left_alone_and_reopen_counts_the_new_size() {
        let dir = Dir::new();
        let mut out = Rotating::open(&dir.path(), rule(8, 5, false)).expect("open");
        write_all(&mut out, b"l1\n");
        // logrotate's mv: the file open is written to until a rotation is due, which leaves
        // it to its mover and starts a new PATH.
        fs::rename(dir.path(), dir.0.join("moved")).expect("mv");
        write_all(&mut out, b"l2\nl3\n");
        // Someone appends to the new PATH; SIGHUP counts it: 5 bytes, so 4 more do not fit.
        File::options()
            .append(true)
            .open(dir.path())
            .and_then(|mut f| f.write_all(b"x\n"))
            .expect("append");
        out.reopen().expect("reopen");
        write_all(&mut out, b"l44\n");
        let after = [("moved", "l1\nl2\n"), ("o", "l44\n"), ("o.1", "l3\nx\n")];
        assert_eq!(dir.files(), want(&after));
    }

    #[test]
    fn only_a_regular_file_is_rotated() {
        let err = Rotating::open(Path::new("/dev/null"), rule(10, 1, false))
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            "/dev/null is not a regular file, and only a regular file can be rotated: drop max_size"
        );
    }
}
