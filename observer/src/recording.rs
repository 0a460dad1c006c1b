//! `--record FILE` and `observer replay FILE`: the raw event stream, exactly as the kernel
//! wrote it, plus what is needed to format it again (host, boot id, clock offset).
//!
//! Layout: the magic `OBSREC01`, a little-endian u32 length and that many bytes of JSON header,
//! then frames of (u32 length, event bytes). A trailing partial frame (the recorder was killed
//! mid-write) ends the replay with a warning.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decode::{self, DecodeError, Event};

const MAGIC: &[u8; 8] = b"OBSREC01";

/// The oldest ABI whose recordings this build reads: every layout recorded since then is
/// unchanged (ABI 5 only added event kinds and load-time offsets).
const OLDEST_READABLE_ABI: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub abi_version: u32,
    pub observer_version: String,
    pub host: String,
    pub kernel: String,
    /// Hex.
    pub boot_id: String,
    pub boot_to_unix_ns: i64,
    /// The live run's `--netns` (inode) and `--port`: replay applies them unless told others,
    /// so that it reproduces what the live run wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Header {
    #[must_use]
    pub fn boot_id_bytes(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        for (byte, i) in id.iter_mut().zip((0..self.boot_id.len()).step_by(2)) {
            *byte = self
                .boot_id
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        id
    }

    #[must_use]
    pub fn hex(id: &[u8; 16]) -> String {
        id.iter().fold(String::with_capacity(32), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    }
}

#[derive(Debug, Error)]
pub enum RecordingError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{0} is not an observer recording (bad magic)")]
    NotRecording(PathBuf),
    #[error(
        "{path}: recording made by ABI version {found}, this observer reads {OLDEST_READABLE_ABI} to {expected}"
    )]
    Abi {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: bad header: {err}")]
    Header {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("{path}: frame {frame}: {err}")]
    Decode {
        path: PathBuf,
        frame: u64,
        err: DecodeError,
    },
}

pub struct Recorder {
    out: BufWriter<File>,
    path: PathBuf,
    failed: bool,
}

impl Recorder {
    /// Creates (truncates) `path` and writes the header.
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordingError> {
        let io = |err| RecordingError::Io {
            path: path.to_owned(),
            err,
        };
        // 0640, as the outputs: a recording names every process and peer of the host.
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            File::options().write(true).create(true).truncate(true),
            0o640,
        )
        .open(path)
        .map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let json = serde_json::to_vec(header).map_err(|err| RecordingError::Header {
            path: path.to_owned(),
            err,
        })?;
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        Ok(Self {
            out,
            path: path.to_owned(),
            failed: false,
        })
    }

    /// Appends one frame. After a write error the recording stops, with one warning; capture
    /// goes on.
    pub fn frame(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes();
        if let Err(e) = self
            .out
            .write_all(&len)
            .and_then(|()| self.out.write_all(bytes))
        {
            eprintln!(
                "observer: warning: recording to {} stopped: {e}; the live output continues",
                self.path.display()
            );
            self.failed = true;
        }
    }

    pub fn event(&mut self, event: &Event, scratch: &mut Vec<u8>) {
        scratch.clear();
        decode::encode_into(event, scratch);
        self.frame(scratch);
    }

    pub fn flush(&mut self) {
        if !self.failed
            && let Err(e) = self.out.flush()
        {
            eprintln!(
                "observer: warning: recording to {} stopped: {e}",
                self.path.display()
            );
            self.failed = true;
        }
    }
}

pub struct Replay {
    input: BufReader<File>,
    path: PathBuf,
    frame: u64,
    buf: Vec<u8>,
    /// Set when the file ended inside a frame.
    pub truncated: bool,
}

impl Replay {
    /// Opens a recording and reads its header.
    ///
    /// # Errors
    /// When the file cannot be read, is not a recording, or is from another ABI version.
    pub fn open(path: &Path) -> Result<(Header, Self), RecordingError> {
        let io = |err| RecordingError::Io {
            path: path.to_owned(),
            err,
        };
        let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| RecordingError::NotRecording(path.to_owned()))?;
        if &magic != MAGIC {
            return Err(RecordingError::NotRecording(path.to_owned()));
        }
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(io)?;
        let mut json = vec![0u8; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut json).map_err(io)?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|err| RecordingError::Header {
                path: path.to_owned(),
                err,
            })?;
        if !(OLDEST_READABLE_ABI..=observer_common::ABI_VERSION).contains(&header.abi_version) {
            return Err(RecordingError::Abi {
                path: path.to_owned(),
                found: header.abi_version,
                expected: observer_common::ABI_VERSION,
            });
        }
        Ok((
            header,
            Self {
                input,
                path: path.to_owned(),
                frame: 0,
                buf: Vec::new(),
                truncated: false,
            },
        ))
    }

    /// The next event; `None` at the end.
    ///
    /// # Errors
    /// A frame that does not decode (the rest of the file is not trusted after it).
    pub fn next_event(&mut self) -> Result<Option<Event>, RecordingError> {
        let mut len = [0u8; 4];
        match self.fill(&mut len)? {
            Fill::Empty | Fill::Torn => return Ok(None),
            Fill::Full => {}
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        let filled = self.fill(&mut buf);
        self.buf = buf;
        if !matches!(filled?, Fill::Full) {
            self.truncated = true;
            return Ok(None);
        }
        self.frame += 1;
        decode::decode(&self.buf)
            .map(Some)
            .map_err(|err| RecordingError::Decode {
                path: self.path.clone(),
                frame: self.frame,
                err,
            })
    }
}

enum Fill {
    Empty,
    Torn,
    Full,
}

impl Replay {
    /// Fills `buf` from the input; a partial fill marks the recording as torn.
    fn fill(&mut self, buf: &mut [u8]) -> Result<Fill, RecordingError> {
        let n = read_full(&mut self.input, buf).map_err(|err| RecordingError::Io {
            path: self.path.clone(),
            err,
        })?;
        Ok(if n == buf.len() {
            Fill::Full
        } else if n == 0 {
            Fill::Empty
        } else {
            self.truncated = true;
            Fill::Torn
        })
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Counters;

    fn header() -> Header {
        Header {
            abi_version: observer_common::ABI_VERSION,
            observer_version: "test".into(),
            host: "h".into(),
            kernel: "6.18".into(),
            boot_id: Header::hex(&[0xab; 16]),
            boot_to_unix_ns: 5,
            netns: None,
            port: None,
        }
    }

    #[test]
    fn round_trips_and_tolerates_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("obsrec-{}", std::process::id()));
        let path = dir.with_extension("rec");
        let mut rec = Recorder::create(&path, &header()).expect("create");
        let mut scratch = Vec::new();
        let events: Vec<Event> = (0..3)
            .map(|i| {
                Event::Counters(Counters {
                    ts_ns: i,
                    values: [i; 8],
                })
            })
            .collect();
        for e in &events {
            rec.event(e, &mut scratch);
        }
        rec.flush();
        drop(rec);
        // Tear the last frame.
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let (h, mut replay) = Replay::open(&path).expect("open");
        assert_eq!(h, header());
        assert_eq!(h.boot_id_bytes(), [0xab; 16]);
        assert_eq!(replay.next_event().expect("1"), Some(events[0].clone()));
        assert_eq!(replay.next_event().expect("2"), Some(events[1].clone()));
        assert_eq!(replay.next_event().expect("end"), None);
        assert!(replay.truncated);
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn rejects_other_files() {
        let path = std::env::temp_dir().join(format!("obsrec-bad-{}", std::process::id()));
        std::fs::write(&path, b"not a recording").expect("write");
        let err = Replay::open(&path).err().expect("rejected");
        assert!(
            err.to_string()
                .ends_with("is not an observer recording (bad magic)"),
            "{err}"
        );
        std::fs::remove_file(&path).expect("cleanup");
    }
}
