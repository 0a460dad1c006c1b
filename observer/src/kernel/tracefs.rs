//! tracefs: where it is mounted, and the record layout of a tracepoint from its `format` file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted: run `mount -t tracefs nodev /sys/kernel/tracing` (or `cargo xtask bootstrap`)"
    )]
    NotMounted,
    #[error("tracepoint {0} does not exist on this kernel ({1} is missing)")]
    NoTracepoint(String, PathBuf),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("tracepoint {tracepoint}: field `{field}` is missing from {path}")]
    MissingField {
        tracepoint: String,
        field: String,
        path: PathBuf,
    },
    #[error(
        "tracepoint {tracepoint}: field `{field}` is {found} bytes, observer expects {expected} (kernel layout changed; please report)"
    )]
    FieldSize {
        tracepoint: String,
        field: String,
        found: u32,
        expected: u32,
    },
}

const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs root, if any.
#[must_use]
pub fn root() -> Option<PathBuf> {
    ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// Mounts tracefs at `/sys/kernel/tracing` when it is not mounted yet.
///
/// # Errors
/// When it is not mounted and mounting fails (not root, or no tracefs in the kernel).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = root() {
        return Ok(root);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted);
    }
    root().ok_or(TracefsError::NotMounted)
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    pub c_type: String,
}

/// The fields of a tracepoint's record, by name (array suffixes removed).
#[derive(Debug, Clone)]
pub struct Format {
    pub tracepoint: String,
    pub path: PathBuf,
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Reads `events/<category>/<name>/format` under `root`.
    ///
    /// # Errors
    /// When the tracepoint does not exist or the file cannot be read.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let tracepoint = format!("{category}:{name}");
        let path = root.join("events").join(category).join(name).join("format");
        if !path.exists() {
            return Err(TracefsError::NoTracepoint(tracepoint, path));
        }
        let text = std::fs::read_to_string(&path).map_err(|err| TracefsError::Read {
            path: path.clone(),
            err,
        })?;
        Ok(Self::parse(tracepoint, path, &text))
    }

    /// Parses the text of a `format` file.
    #[must_use]
    pub fn parse(tracepoint: String, path: PathBuf, text: &str) -> Self {
        let fields = text.lines().filter_map(parse_field_line).collect();
        Self {
            tracepoint,
            path,
            fields,
        }
    }

    /// The offset of `field`, checking its size.
    ///
    /// # Errors
    /// When the field is missing or has another size.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, TracefsError> {
        let found = self
            .fields
            .get(field)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: field.to_owned(),
                path: self.path.clone(),
            })?;
        if found.size != size {
            return Err(TracefsError::FieldSize {
                tracepoint: self.tracepoint.clone(),
                field: field.to_owned(),
                found: found.size,
                expected: size,
            });
        }
        Ok(found.offset)
    }

    /// Like [`Format::offset`], but `None` when the field is absent (newer fields).
    ///
    /// # Errors
    /// When the field exists with another size.
    pub fn optional(&self, field: &str, size: u32) -> Result<Option<u32>, TracefsError> {
        if self.fields.contains_key(field) {
            self.offset(field, size).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// `\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`
fn parse_field_line(line: &str) -> Option<(String, Field)> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix("field:") {
            decl = Some(rest.trim());
        } else if let Some(rest) = part.strip_prefix("offset:") {
            offset = rest.trim().parse().ok();
        } else if let Some(rest) = part.strip_prefix("size:") {
            size = rest.trim().parse().ok();
        }
    }
    let decl = decl?;
    let (c_type, name) = decl
        .rsplit_once([' ', '*'])
        .map_or(("", decl), |(t, n)| (t, n));
    let name = name.split('[').next()?.trim().to_owned();
    Some((
        name,
        Field {
            offset: offset?,
            size: size?,
            c_type: c_type.trim().to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p skaddr=%p src=%pISpc\", REC->skbaddr
";

    fn format() -> Format {
        Format::parse(
            "tcp:tcp_send_reset".into(),
            "/x/format".into(),
            SEND_RESET_6_18,
        )
    }

    #[test]
    fn parses_fields_with_pointers_arrays_and_enums() {
        let f = format();
        assert_eq!(f.offset("skaddr", 8).expect("skaddr"), 16);
        assert_eq!(f.offset("reason", 4).expect("reason"), 28);
        assert_eq!(f.offset("saddr", 28).expect("saddr"), 32);
        assert_eq!(f.fields["skaddr"].c_type, "const void *");
        assert_eq!(f.fields["saddr"].c_type, "__u8");
        assert_eq!(f.fields.len(), 8);
    }

    #[test]
    fn missing_and_resized_fields_are_named() {
        let f = format();
        let err = f.offset("sport", 2).expect_err("absent on 6.18");
        assert_eq!(
            err.to_string(),
            "tracepoint tcp:tcp_send_reset: field `sport` is missing from /x/format"
        );
        let err = f.offset("state", 8).expect_err("wrong size");
        assert!(
            err.to_string()
                .contains("field `state` is 4 bytes, observer expects 8")
        );
        assert_eq!(f.optional("sport", 2).expect("absent is fine"), None);
    }
}
