//! A file output: appended to, created 0640 (the records name every process and peer of the
//! host), reopened by its name on SIGHUP.

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::{spec::Rotate, writer::Out};

/// Opens `path` for appending, creating it 0640. A regular file that exists keeps its owner,
/// but loses any permission for others: what the agent writes is not for every local user.
///
/// # Errors
/// As `open(2)`.
pub fn append(path: &Path) -> io::Result<File> {
    let file = File::options()
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

pub struct FileOut {
    path: PathBuf,
    file: File,
}

impl FileOut {
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path, rotate: Option<Rotate>) -> io::Result<Self> {
        if rotate.is_some() {
            return Err(io::Error::other("rotation (max_size) is not built yet"));
        }
        Ok(Self {
            path: path.to_owned(),
            file: append(path)?,
        })
    }
}

impl Out for FileOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = append(&self.path)?;
        Ok(())
    }
}
