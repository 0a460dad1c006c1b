//! What `--sink URL` and a `[[sink]]` table say: where an output goes and its options.
//!
//! `stdout`, `file:///PATH`, `tcp://HOST:PORT`, `unix:///PATH`, `otlp+http://HOST:PORT[/PATH]`,
//! each optionally followed by `?key=value&…`: `name`, `filter`, and for files `max_size`,
//! `max_backups`, `gzip`. Values may be percent-encoded (`%26` for `&`); spaces need not be.

use std::{fmt, fmt::Write as _, path::PathBuf};

/// One output, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// Its name in `loss.sink.<name>` and the `stopped` line; the scheme unless given.
    pub name: Option<String>,
    pub target: Target,
    /// Only the records this expression admits (docs/filters.md; checked when parsed). Of
    /// the observer's own lines (loss, agent), only `dataset:` terms can hide any.
    pub filter: Option<String>,
    /// The text it was parsed from, for messages.
    pub url: String,
}

/// Where an output's lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// Appended to, created 0640: the records name every process and peer of the host.
    File {
        path: PathBuf,
        rotate: Option<Rotate>,
    },
    /// An NDJSON stream to `HOST:PORT`, reconnected when it breaks.
    Tcp {
        addr: String,
    },
    /// An NDJSON stream to a unix stream socket, reconnected when it breaks.
    Unix {
        path: PathBuf,
    },
    /// OpenTelemetry logs as protobuf, each batch an HTTP POST to `path` at `addr`.
    Otlp {
        addr: String,
        path: String,
    },
}

/// Size-based rotation of a file output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotate {
    /// The file is rotated before it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.N`).
    pub max_backups: u32,
    /// Rotated files are gzipped (`PATH.1.gz`).
    pub gzip: bool,
}

/// `max_backups` when only `max_size` is given, as Tetragon's default.
pub const DEFAULT_MAX_BACKUPS: u32 = 5;

impl Target {
    /// Whether both write to the same place (a file whatever its rotation).
    #[must_use]
    pub fn same_place(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::File { path: a, .. }, Target::File { path: b, .. }) => a == b,
            _ => self == other,
        }
    }

    /// The scheme, the output's default name.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Stdout => "stdout",
            Target::File { .. } => "file",
            Target::Tcp { .. } => "tcp",
            Target::Unix { .. } => "unix",
            Target::Otlp { .. } => "otlp",
        }
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl SinkSpec {
    /// A file output without options (`-o FILE`).
    #[must_use]
    pub fn file(path: PathBuf) -> Self {
        Self {
            name: None,
            url: format!("file://{}", path.display()),
            target: Target::File { path, rotate: None },
            filter: None,
        }
    }

    #[must_use]
    pub fn stdout() -> Self {
        Self {
            name: None,
            target: Target::Stdout,
            filter: None,
            url: "stdout".to_owned(),
        }
    }

    /// Parses a `--sink` value.
    ///
    /// # Errors
    /// An unknown scheme, a missing path or port, an unknown or bad option: a message that
    /// says what is valid.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (scheme, rest) = match base.split_once("://") {
            Some((s, r)) => (s, r),
            None if base == "stdout" || base == "-" => ("stdout", ""),
            None => return Err(format!("`{url}` is not an output URL; {SCHEMES}")),
        };
        let mut options = Options::parse(query)?;
        let target = match scheme {
            "stdout" if rest.is_empty() => Target::Stdout,
            "file" => Target::File {
                path: absolute(rest, url)?,
                rotate: options.rotate()?,
            },
            "tcp" => Target::Tcp {
                addr: host_port(rest, url)?,
            },
            "unix" => Target::Unix {
                path: absolute(rest, url)?,
            },
            "otlp+http" => {
                let (addr, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
                Target::Otlp {
                    addr: host_port(addr, url)?,
                    path: if path.is_empty() || path == "/" {
                        "/v1/logs".to_owned()
                    } else {
                        path.to_owned()
                    },
                }
            }
            "otlp" | "otlp+grpc" | "otlp+https" | "https" | "http" => {
                return Err(format!(
                    "`{scheme}://` outputs are not supported: OTLP goes over plain HTTP with protobuf (`otlp+http://HOST:4318`); put a collector in front for TLS or gRPC"
                ));
            }
            _ => return Err(format!("unknown output scheme `{scheme}`; {SCHEMES}")),
        };
        let name = options.take("name");
        if let Some(n) = &name
            && (n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!(
                "output name `{n}` may hold only letters, digits and `_` (it becomes a JSON key, loss.sink.<name>)"
            ));
        }
        let filter = options.take("filter").filter(|f| !f.trim().is_empty());
        if let Some(f) = &filter {
            crate::filter::Filter::parse(f).map_err(|e| format!("filter `{f}`: {e}"))?;
        }
        options.done(scheme)?;
        Ok(Self {
            name,
            target,
            filter,
            url: url.to_owned(),
        })
    }
}

const SCHEMES: &str =
    "use stdout, file:///PATH, tcp://HOST:PORT, unix:///PATH or otlp+http://HOST:PORT";

/// The `?key=value&…` part, taken key by key.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(query: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(format!("output option `{pair}` has no value (key=value)"));
            };
            let (k, v) = (decode(k)?, decode(v)?);
            if pairs.iter().any(|(p, _)| *p == k) {
                return Err(format!("output option `{k}` is given twice"));
            }
            pairs.push((k, v));
        }
        Ok(Self(pairs))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    fn rotate(&mut self) -> Result<Option<Rotate>, String> {
        let max_size = self.take("max_size");
        let backups = self.take("max_backups");
        let gzip = self.take("gzip");
        let Some(size) = max_size else {
            if backups.is_some() || gzip.is_some() {
                return Err("max_backups and gzip need max_size (e.g. max_size=100MiB)".into());
            }
            return Ok(None);
        };
        let max_bytes = bytes(&size)?;
        let max_backups = match backups {
            None => DEFAULT_MAX_BACKUPS,
            Some(b) => b
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("max_backups `{b}` must be a number from 1 to 1000"))?,
        };
        let gzip = match gzip.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("gzip `{other}` must be true or false")),
        };
        Ok(Some(Rotate {
            max_bytes,
            max_backups,
            gzip,
        }))
    }

    fn done(self, scheme: &str) -> Result<(), String> {
        let Some((key, _)) = self.0.first() else {
            return Ok(());
        };
        let valid = if scheme == "file" {
            "name, filter, max_size, max_backups, gzip"
        } else {
            "name, filter"
        };
        Err(format!(
            "unknown option `{key}` for a {scheme} output; valid: {valid}"
        ))
    }
}

/// The least `max_size`: a rotation per line would be no log at all.
const MIN_ROTATE_BYTES: u64 = 64 << 10;

/// `100MiB`, `10M`, `512KiB`, `1G`, `1048576`.
fn bytes(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "max_size `{text}`: unknown unit `{unit}`; use KiB, MiB or GiB"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n >= MIN_ROTATE_BYTES)
        .ok_or_else(|| format!("max_size `{text}` must be a size of at least 64KiB (e.g. 100MiB)"))
}

fn decode(text: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next(), bytes.next()];
            let value = match hex {
                [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok()),
                _ => None,
            };
            out.push(value.ok_or_else(|| format!("bad percent-escape in `{text}`"))?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// Percent-encodes what would end a query value (`&`, `%`, `?`, `#`), for a `[[sink]]` table.
#[must_use]
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' | '%' | '?' | '#' | '=' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn absolute(path: &str, url: &str) -> Result<PathBuf, String> {
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "`{url}` needs an absolute path: three slashes, as in file:///var/log/observer.ndjson"
        ))
    }
}

fn host_port(text: &str, url: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "`{url}` needs a host and a port, as in tcp://127.0.0.1:5140 or tcp://[::1]:5140"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_and_option() {
        let cases: &[(&str, Target, Option<&str>, Option<&str>)] = &[
            ("stdout", Target::Stdout, None, None),
            ("-", Target::Stdout, None, None),
            (
                "file:///var/log/o.ndjson",
                Target::File {
                    path: "/var/log/o.ndjson".into(),
                    rotate: None,
                },
                None,
                None,
            ),
            (
                "file:///l/o?max_size=10MiB&max_backups=3&gzip=true&name=main",
                Target::File {
                    path: "/l/o".into(),
                    rotate: Some(Rotate {
                        max_bytes: 10 << 20,
                        max_backups: 3,
                        gzip: true,
                    }),
                },
                Some("main"),
                None,
            ),
            (
                "file:///l/o?max_size=1048576",
                Target::File {
                    path: "/l/o".into(),
                    rotate: Some(Rotate {
                        max_bytes: 1 << 20,
                        max_backups: DEFAULT_MAX_BACKUPS,
                        gzip: false,
                    }),
                },
                None,
                None,
            ),
            (
                "tcp://127.0.0.1:5140?filter=dataset:tls port:443",
                Target::Tcp {
                    addr: "127.0.0.1:5140".into(),
                },
                None,
                Some("dataset:tls port:443"),
            ),
            (
                "tcp://[::1]:5140?filter=a%26b",
                Target::Tcp {
                    addr: "[::1]:5140".into(),
                },
                None,
                Some("a&b"),
            ),
            (
                "unix:///run/vector.sock",
                Target::Unix {
                    path: "/run/vector.sock".into(),
                },
                None,
                None,
            ),
            (
                "otlp+http://collector:4318",
                Target::Otlp {
                    addr: "collector:4318".into(),
                    path: "/v1/logs".into(),
                },
                None,
                None,
            ),
            (
                "otlp+http://127.0.0.1:4318/custom/logs",
                Target::Otlp {
                    addr: "127.0.0.1:4318".into(),
                    path: "/custom/logs".into(),
                },
                None,
                None,
            ),
        ];
        for (url, target, name, filter) in cases {
            let spec = SinkSpec::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(&spec.target, target, "{url}");
            assert_eq!(spec.name.as_deref(), *name, "{url}");
            assert_eq!(spec.filter.as_deref(), *filter, "{url}");
        }
    }

    #[test]
    fn errors_say_what_is_valid() {
        let cases = [
            (
                "/var/log/x",
                "`/var/log/x` is not an output URL; use stdout, file:///PATH, tcp://HOST:PORT, unix:///PATH or otlp+http://HOST:PORT",
            ),
            (
                "ftp://x:1",
                "unknown output scheme `ftp`; use stdout, file:///PATH, tcp://HOST:PORT, unix:///PATH or otlp+http://HOST:PORT",
            ),
            (
                "file://var/log/x",
                "`file://var/log/x` needs an absolute path: three slashes, as in file:///var/log/observer.ndjson",
            ),
            (
                "tcp://host",
                "`tcp://host` needs a host and a port, as in tcp://127.0.0.1:5140 or tcp://[::1]:5140",
            ),
            (
                "tcp://host:0",
                "`tcp://host:0` needs a host and a port, as in tcp://127.0.0.1:5140 or tcp://[::1]:5140",
            ),
            (
                "tcp://h:1?max_size=1M",
                "unknown option `max_size` for a tcp output; valid: name, filter",
            ),
            (
                "file:///x?colour=red",
                "unknown option `colour` for a file output; valid: name, filter, max_size, max_backups, gzip",
            ),
            (
                "file:///x?max_size=10",
                "max_size `10` must be a size of at least 64KiB (e.g. 100MiB)",
            ),
            (
                "file:///x?max_size=10XB",
                "max_size `10XB`: unknown unit `XB`; use KiB, MiB or GiB",
            ),
            (
                "file:///x?gzip=true",
                "max_backups and gzip need max_size (e.g. max_size=100MiB)",
            ),
            (
                "file:///x?max_size=1M&max_backups=0",
                "max_backups `0` must be a number from 1 to 1000",
            ),
            (
                "file:///x?max_size=1M&gzip=yes",
                "gzip `yes` must be true or false",
            ),
            (
                "file:///x?name=a.b",
                "output name `a.b` may hold only letters, digits and `_` (it becomes a JSON key, loss.sink.<name>)",
            ),
            (
                "file:///x?name=a&name=b",
                "output option `name` is given twice",
            ),
            (
                "file:///x?name",
                "output option `name` has no value (key=value)",
            ),
            ("file:///x?filter=%zz", "bad percent-escape in `%zz`"),
            (
                "tcp://h:1?filter=prot:443",
                "filter `prot:443`: unknown key `prot` at column 1: the keys are port, sport, dport, pid, comm, state, addr, cgroup, container, dataset, sni, role, netns, conn_state, rule",
            ),
            (
                "otlp+grpc://c:4317",
                "`otlp+grpc://` outputs are not supported: OTLP goes over plain HTTP with protobuf (`otlp+http://HOST:4318`); put a collector in front for TLS or gRPC",
            ),
        ];
        for (url, message) in cases {
            assert_eq!(SinkSpec::parse(url).expect_err(url), message, "{url}");
        }
    }

    #[test]
    fn encoded_values_round_trip() {
        let value = "port:443 & 100% ?#=";
        let url = format!("tcp://h:1?filter={}", encode(value));
        assert_eq!(
            SinkSpec::parse(&url).expect("valid").filter.as_deref(),
            Some(value)
        );
    }
}
