//! The configuration file (docs/config.md): TOML whose keys are `run`'s flags.
//!
//! Every flag of `run` has a key, found from the command line's own definition, so a new flag
//! needs no code here: top-level keys for the plain flags (`max_connections` for
//! `--max-connections`), `[anomalies]` with `enabled` for `--anomalies`, and a table per rule
//! (`[anomalies.syn_flood]`, `window` for `--syn-flood-window`). The file becomes arguments
//! placed before the command line's, so a flag given overrides the file. Each value is checked
//! by the flag's own parser, and an error names the file, line, column and key.

use std::{
    borrow::Cow,
    ffi::OsString,
    fmt::Write as _,
    ops::Range,
    path::{Path, PathBuf},
};

use clap::{Arg, Command};
use thiserror::Error;
use toml::de::{DeTable, DeValue};

/// Read when `run` gets no `--config`, if it exists.
pub const DEFAULT_PATH: &str = "/etc/observer/observer.toml";

/// The help heading of the anomaly flags: they go in the `[anomalies]` tables.
pub const ANOMALY_HEADING: &str = "Anomaly detection";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// One key of the file and the flag it stands for.
#[derive(Debug, Clone)]
pub struct Key {
    /// `None` for the top level, else `anomalies` or `anomalies.<rule>`.
    pub table: Option<String>,
    pub name: String,
    pub arg: Arg,
}

impl Key {
    #[must_use]
    pub fn flag(&self) -> String {
        format!("--{}", self.arg.get_long().unwrap_or_default())
    }

    /// Whether it is a switch (a TOML boolean) rather than a value.
    #[must_use]
    pub fn is_switch(&self) -> bool {
        !self.arg.get_action().takes_values()
    }

    /// Whether the flag may be given more than once (an array in the file).
    #[must_use]
    pub fn is_repeatable(&self) -> bool {
        matches!(self.arg.get_action(), clap::ArgAction::Append)
    }
}

/// Rule ids whose flags start with another prefix.
const RULE_PREFIXES: [(&str, &str); 3] = [
    ("close_wait", "close_wait_stuck"),
    ("fin_wait_2", "fin_wait_2_stuck"),
    ("accept_queue", "accept_queue_overflow"),
];

/// The rules' table names, longest prefix first so `rst_storm` is not taken for `rst`.
const RULES: [&str; 10] = [
    "tls_handshake_failures",
    "time_wait_pressure",
    "connect_failures",
    "retransmit_storm",
    "accept_queue",
    "fin_wait_2",
    "close_wait",
    "event_loss",
    "rst_storm",
    "syn_flood",
];

/// Every key of `run` (the subcommand's definition), in its flags' order.
///
/// # Panics
/// When an anomaly flag belongs to no rule of [`RULES`]: a new rule's prefix goes there (the
/// unit tests catch it).
#[must_use]
pub fn keys(run: &Command) -> Vec<Key> {
    let mut keys = Vec::new();
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        let flag = long.replace('-', "_");
        let (table, name) = if arg.get_help_heading() != Some(ANOMALY_HEADING) {
            (None, flag)
        } else if flag == "anomalies" {
            (Some("anomalies".to_owned()), "enabled".to_owned())
        } else {
            let rule = RULES
                .iter()
                .find(|r| flag == **r || flag.starts_with(&format!("{r}_")))
                .unwrap_or_else(|| panic!("--{long} belongs to no anomaly rule"));
            let id = RULE_PREFIXES
                .iter()
                .find(|(p, _)| p == rule)
                .map_or(*rule, |(_, id)| id);
            let name = flag
                .strip_prefix(rule)
                .and_then(|r| r.strip_prefix('_'))
                .unwrap_or("threshold");
            (Some(format!("anomalies.{id}")), name.to_owned())
        };
        keys.push(Key {
            table,
            name,
            arg: arg.clone(),
        });
    }
    keys
}

/// The arguments the file at `path` (text `text`) stands for, checked against `run`; `env`
/// looks up `${VAR}`.
///
/// # Errors
/// A syntax error, an unknown table or key, a value of the wrong type or out of range, or an
/// unset variable: each with the file, line and column.
pub fn to_args(
    path: &Path,
    text: &str,
    run: &Command,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, ConfigError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_column(text, span.start);
        ConfigError::At {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let root = DeTable::parse(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            format!("not valid TOML: {}", e.message().trim_end()),
        )
    })?;
    let keys = keys(run);
    let mut args = Vec::new();
    let mut tables = vec![(None::<String>, root.get_ref())];
    while let Some((table, entries)) = tables.pop() {
        for (key, value) in entries {
            let name = key.get_ref().as_ref();
            let here: Vec<&Key> = keys.iter().filter(|k| k.table == table).collect();
            if let Some(k) = here.iter().find(|k| k.name == name) {
                // A repeatable flag takes an array, one value per element (`[[sink]]` tables).
                let values = match value.get_ref() {
                    DeValue::Array(items) if k.is_repeatable() => items.iter().collect(),
                    _ => vec![value],
                };
                for v in values {
                    value_args(k, v.get_ref(), env)
                        .map_err(|m| at(v.span(), format!("key `{}`: {m}", dotted(k))))?
                        .into_iter()
                        .for_each(|a| args.push(a));
                }
                continue;
            }
            let sub = table
                .as_ref()
                .map_or(name.to_owned(), |t| format!("{t}.{name}"));
            if keys
                .iter()
                .any(|k| k.table.as_deref() == Some(sub.as_str()))
            {
                let DeValue::Table(inner) = value.get_ref() else {
                    return Err(at(
                        value.span(),
                        format!("`{sub}` must be a table ([{sub}])"),
                    ));
                };
                tables.push((Some(sub), inner));
                continue;
            }
            return Err(at(key.span(), unknown(name, table.as_deref(), &keys)));
        }
    }
    Ok(args)
}

/// `settings` without the values of `flag` (a repeatable flag the command line gives).
#[must_use]
pub fn without(settings: Vec<OsString>, flag: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(settings.len());
    let mut args = settings.into_iter();
    while let Some(arg) = args.next() {
        if arg == flag {
            args.next();
        } else {
            out.push(arg);
        }
    }
    out
}

/// Reads the file at `path` as arguments for `run`, with the process's environment.
///
/// # Errors
/// As [`to_args`], and when it cannot be read.
pub fn load(path: &Path, run: &Command) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })?;
    to_args(path, &text, run, &|name| std::env::var(name).ok())
}

/// `anomalies.syn_flood.window`.
fn dotted(k: &Key) -> String {
    k.table
        .as_ref()
        .map_or_else(|| k.name.clone(), |t| format!("{t}.{}", k.name))
}

/// The message for an unknown key in `table`, with what is valid there.
fn unknown(name: &str, table: Option<&str>, keys: &[Key]) -> String {
    let mut valid: Vec<String> = keys
        .iter()
        .filter(|k| k.table.as_deref() == table)
        .map(|k| k.name.clone())
        .collect();
    let prefix = table.map_or(String::new(), |t| format!("{t}."));
    let mut subtables: Vec<String> = keys
        .iter()
        .filter_map(|k| k.table.as_deref()?.strip_prefix(&prefix).map(str::to_owned))
        .filter(|t| !t.contains('.') && !t.is_empty())
        .map(|t| format!("[{prefix}{t}]"))
        .collect();
    subtables.dedup();
    if table.is_none() {
        subtables.insert(0, "[anomalies]".to_owned());
        subtables.dedup();
    }
    valid.extend(subtables);
    let mut message = format!(
        "unknown key `{prefix}{name}`; valid {}: {}",
        table.map_or("at the top level".to_owned(), |t| format!("in [{t}]")),
        valid.join(", ")
    );
    if let Some(close) = valid
        .iter()
        .map(|v| v.trim_matches(['[', ']']))
        .map(|v| v.rsplit('.').next().unwrap_or(v))
        .filter(|v| distance(v, name) <= 2)
        .min_by_key(|v| distance(v, name))
    {
        let _ = write!(message, " (did you mean `{close}`?)");
    }
    message
}

/// The arguments one value stands for, checked by its flag's own parser.
fn value_args(
    key: &Key,
    value: &DeValue<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, String> {
    let flag = key.flag();
    if key.is_switch() {
        return match value {
            DeValue::Boolean(true) => Ok(vec![flag.into()]),
            DeValue::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, found {}", kind(other))),
        };
    }
    let text: Cow<'_, str> = match value {
        DeValue::String(s) => expand(s, env)?.into(),
        DeValue::Table(t) if key.name == "sink" => sink_url(t, env)?.into(),
        DeValue::Integer(i) if i.radix() == 10 => Cow::Borrowed(i.as_str()),
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map_err(|e| format!("{e}"))?
            .to_string()
            .into(),
        other => {
            return Err(format!(
                "expected a {}, found {}",
                key.arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map_or("value".to_owned(), |n| format!("{n} value")),
                kind(other)
            ));
        }
    };
    // The flag's own parser, alone: the same ranges and messages as on the command line.
    let probe = Command::new("observer")
        .no_binary_name(true)
        .color(clap::ColorChoice::Never)
        .arg(key.arg.clone());
    probe
        .try_get_matches_from([flag.as_str(), text.as_ref()])
        .map_err(|e| {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_owned()
        })?;
    Ok(vec![flag.into(), text.into_owned().into()])
}

/// The keys of a `[[sink]]` table besides `url`: its URL's query options.
const SINK_OPTIONS: [&str; 5] = ["name", "filter", "max_size", "max_backups", "gzip"];

/// A `[[sink]]` table as the `--sink` URL it stands for: `url` plus its options as the query.
fn sink_url(table: &DeTable<'_>, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut url = None;
    let mut query = Vec::new();
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        let text = match value.get_ref() {
            DeValue::String(s) => expand(s, env)?,
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|e| format!("`{name}`: {e}"))?
                .to_string(),
            DeValue::Boolean(b) => b.to_string(),
            other => return Err(format!("`{name}` must be a string, found {}", kind(other))),
        };
        if name == "url" {
            url = Some(text);
        } else if SINK_OPTIONS.contains(&name) {
            query.push(format!("{name}={}", crate::sink::spec::encode(&text)));
        } else {
            return Err(format!(
                "unknown key `{name}` in a [[sink]] table; valid: url, {}",
                SINK_OPTIONS.join(", ")
            ));
        }
    }
    let url =
        url.ok_or("a [[sink]] table needs a `url` (stdout, file:///PATH, tcp://HOST:PORT, …)")?;
    if query.is_empty() {
        return Ok(url);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{}", query.join("&")))
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `${VAR}` and `${VAR:-default}` (also when VAR is empty), `$$` for a `$`.
///
/// # Errors
/// An unset variable without a default, or an unclosed `${`.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let close = inner
                .find('}')
                .ok_or_else(|| format!("`${{` without its `}}` in {s:?}"))?;
            let (name, default) = match inner[..close].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&inner[..close], None),
            };
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-DEFAULT}} for a default)"
                    ));
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
