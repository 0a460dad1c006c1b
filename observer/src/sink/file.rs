//! A file output: appended to, created 0640 (the records name every process and peer of the
//! host), reopened by its name on SIGHUP, and with `max_size` rotated by size
//! ([`super::rotate`]).

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::{rotate::Rotating, spec::Rotate, writer::Out};

/// Opens `path` for appending, creating it 0640. A regular file that exists keeps its owner,
/// but loses any permission for others: what the agent writes is not for every local user.
///
/// # Errors
/// As `open(2)`.
pub fn append(path: &Path) -> io::Result<File> {
    open(path, false)
}

/// As [`append`], also readable (a rotated file is compressed from the descriptor that wrote
/// it, not from a name someone may have moved).
pub(super) fn append_readable(path: &Path) -> io::Result<File> {
    open(path, true)
}

fn open(path: &Path, read: bool) -> io::Result<File> {
    let file = File::options()
        .read(read)
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    // Only a regular file: /dev/null and a FIFO are not the agent's to change.
    let meta = file.metadata()?;
    let mode = meta.permissions().mode();
    if meta.is_file() && mode & 0o007 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7770))?;
    }
    Ok(file)
}

pub struct FileOut(Kind);

enum Kind {
    Plain { path: PathBuf, file: File },
    Rotating(Rotating),
}

impl FileOut {
    /// # Errors
    /// When the file cannot be opened, or is not a regular file and should be rotated.
    pub fn open(path: &Path, rotate: Option<Rotate>) -> io::Result<Self> {
        Ok(Self(match rotate {
            None => Kind::Plain {
                path: path.to_owned(),
                file: append(path)?,
            },
            Some(rule) => Kind::Rotating(Rotating::open(path, rule)?),
        }))
    }
}

impl Out for FileOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Kind::Plain { file, .. } => file.write(buf),
            Kind::Rotating(r) => r.write(buf),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Kind::Plain { path, file } => *file = append(path)?,
            Kind::Rotating(r) => r.reopen()?,
        }
        Ok(())
    }
}
