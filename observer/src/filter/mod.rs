//! One filter language for `top`'s `/` prompt, each sink's `filter` and `--filter`
//! (docs/filters.md): terms separated by spaces, all of which must match; a term is `key:value`
//! or a bare word, `!` negates it and `,` separates alternative values.
//!
//! A record is seen through [`Fields`], so the same terms judge a connection record, an alert
//! or a row of `top`. What a record lacks does not match; a record kind may instead ignore
//! keys (the observer's own lines ignore every key but `dataset`, so a filter never hides
//! their loss reports unless it says so).

mod records;

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::track::lifecycle::Lifecycle;

/// The `event.dataset` of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Connection,
    State,
    Tls,
    Anomaly,
    Loss,
    Agent,
}

impl Dataset {
    pub const ALL: [Dataset; 6] = [
        Dataset::Connection,
        Dataset::State,
        Dataset::Tls,
        Dataset::Anomaly,
        Dataset::Loss,
        Dataset::Agent,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Connection => "observer.connection",
            Dataset::State => "observer.state",
            Dataset::Tls => "observer.tls",
            Dataset::Anomaly => "observer.anomaly",
            Dataset::Loss => "observer.loss",
            Dataset::Agent => "observer.agent",
        }
    }

    /// By its name, with or without `observer.`, in any case.
    fn named(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| {
            let name = d.name();
            name.eq_ignore_ascii_case(text) || name["observer.".len()..].eq_ignore_ascii_case(text)
        })
    }
}

/// What a term looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Port,
    Sport,
    Dport,
    Pid,
    Comm,
    State,
    Addr,
    Cgroup,
    Container,
    Dataset,
    Sni,
    Role,
    Netns,
    ConnState,
    Rule,
    /// A bare word: pid, process name, state, address, server name or rule, as text.
    Word,
}

impl Key {
    /// Every key a term can name, in docs/filters.md's order.
    pub const ALL: [Key; 15] = [
        Key::Port,
        Key::Sport,
        Key::Dport,
        Key::Pid,
        Key::Comm,
        Key::State,
        Key::Addr,
        Key::Cgroup,
        Key::Container,
        Key::Dataset,
        Key::Sni,
        Key::Role,
        Key::Netns,
        Key::ConnState,
        Key::Rule,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Key::Port => "port",
            Key::Sport => "sport",
            Key::Dport => "dport",
            Key::Pid => "pid",
            Key::Comm => "comm",
            Key::State => "state",
            Key::Addr => "addr",
            Key::Cgroup => "cgroup",
            Key::Container => "container",
            Key::Dataset => "dataset",
            Key::Sni => "sni",
            Key::Role => "role",
            Key::Netns => "netns",
            Key::ConnState => "conn_state",
            Key::Rule => "rule",
            Key::Word => "word",
        }
    }

    /// A term of this key, for error messages.
    fn example(self) -> &'static str {
        match self {
            Key::Port => "port:443",
            Key::Sport => "sport:40000",
            Key::Dport => "dport:443",
            Key::Pid => "pid:1234",
            Key::Comm => "comm:nginx",
            Key::State => "state:estab",
            Key::Addr => "addr:10.0.0.0/8",
            Key::Cgroup => "cgroup:/system.slice",
            Key::Container => "container:3f2a9c1b0d4e",
            Key::Dataset => "dataset:observer.tls",
            Key::Sni => "sni:example.com",
            Key::Role => "role:server",
            Key::Netns => "netns:4026531840",
            Key::ConnState => "conn_state:REJ",
            Key::Rule => "rule:syn_flood",
            Key::Word => "nginx",
        }
    }

    fn named(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == text)
    }

    fn numeric(self) -> bool {
        matches!(
            self,
            Key::Port | Key::Sport | Key::Dport | Key::Pid | Key::Netns
        )
    }
}

/// Every anomaly rule's `rule.id` (docs/anomalies.md).
pub const RULES: [&str; 10] = [
    "accept_queue_overflow",
    "close_wait_stuck",
    "connect_failures",
    "event_loss",
    "fin_wait_2_stuck",
    "retransmit_storm",
    "rst_storm",
    "syn_flood",
    "time_wait_pressure",
    "tls_handshake_failures",
];

/// The Zeek `conn_state`s the observer writes (docs/schema/connection.json).
pub const CONN_STATES: [&str; 10] = [
    "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "OTH",
];

const ROLES: [&str; 3] = ["client", "server", "unknown"];

/// The kernel's state names and their spelling by `ss` (as `top` always accepted them).
const TCP_STATES: [(&str, &str); 13] = [
    ("ESTABLISHED", "estab"),
    ("SYN_SENT", "syn-sent"),
    ("SYN_RECV", "syn-recv"),
    ("FIN_WAIT1", "fin-wait1"),
    ("FIN_WAIT2", "fin-wait2"),
    ("TIME_WAIT", "time-wait"),
    ("CLOSE", "close"),
    ("CLOSE_WAIT", "close-wait"),
    ("LAST_ACK", "last-ack"),
    ("LISTEN", "listen"),
    ("CLOSING", "closing"),
    ("NEW_SYN_RECV", "new-syn-recv"),
    ("UNKNOWN", "unknown"),
];

/// An alert's states.
const ALERT_STATES: [&str; 2] = ["firing", "resolved"];

/// One end of a connection as a filter sees it; no port for a whole remote host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl From<SocketAddr> for End {
    fn from(a: SocketAddr) -> Self {
        Self {
            ip: a.ip(),
            port: Some(a.port()),
        }
    }
}

/// The states `state:` looks at.
#[derive(Debug, Clone, Copy, Default)]
pub enum States<'a> {
    #[default]
    None,
    One(&'a str),
    /// A connection record's: every state it entered, and, when it existed before the
    /// observer (`true`), the state it was first seen in.
    Life(&'a Lifecycle, bool),
}

impl States<'_> {
    fn any(&self, f: impl Fn(&str) -> bool) -> bool {
        use crate::track::lifecycle::state_name;
        match *self {
            States::None => false,
            States::One(s) => f(s),
            States::Life(lc, pre_existing) => {
                (pre_existing && f(state_name(lc.first_state)))
                    || lc.steps().iter().any(|s| f(state_name(s.state)))
            }
        }
    }
}

/// What a filter sees of one record. `None`: the record has no such value, and a term on it
/// does not match (`!` of it does). Keys in `ignore` pass whatever the term says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    pub dataset: Option<Dataset>,
    /// The originator (`sport`) and the responder (`dport`); in `top`, the local and the
    /// remote end.
    pub source: Option<End>,
    pub destination: Option<End>,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
    pub states: States<'a>,
    pub sni: Option<&'a str>,
    pub role: Option<&'a str>,
    pub netns: Option<u32>,
    pub conn_state: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub container: Option<&'a str>,
    pub ignore: &'static [Key],
}

/// A filter expression that does not parse: what is wrong, where (a 1-based column, in
/// characters) and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("unknown key `{key}` at column {column}: the keys are {}", key_list())]
    UnknownKey { key: String, column: usize },
    #[error("`{key}:` at column {column} has no value: write one, e.g. `{example}`")]
    NoValue {
        key: &'static str,
        column: usize,
        example: &'static str,
    },
    #[error("{key} value `{value}` at column {column} is not valid: {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        column: usize,
        expected: String,
    },
    #[error(
        "empty alternative at column {column} in `{term}`: separate values with single \
         commas, e.g. `port:80,443`"
    )]
    EmptyAlternative { term: String, column: usize },
    #[error(
        "`!` at column {column} negates nothing: write it right before a term, e.g. `!port:22`"
    )]
    LoneNot { column: usize },
}

fn key_list() -> String {
    Key::ALL.map(Key::name).join(", ")
}

/// One alternative value of a term.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pat {
    Num(u32),
    /// Lowercase text, matched as a substring ignoring ASCII case.
    Text(String),
    /// Lowercase text: a cgroup path prefix (whole components) or a container id prefix.
    Prefix(String),
    /// One of a closed set of values (role, `conn_state`, rule), compared ignoring case.
    Exact(&'static str),
    Dataset(Dataset),
    Ip(IpAddr),
    Sock(SocketAddr),
    Cidr(IpAddr, u8),
    /// What a number key makes of text that is not a number (as you type, in `top`).
    Never,
    /// A bare word: lowercase text, and the number it spells, for pids.
    Word(String, Option<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    negated: bool,
    key: Key,
    alts: Vec<Pat>,
}

/// A parsed expression: every term must match. The empty one admits everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Filter {
    /// An expression given on the command line or in a config file.
    ///
    /// # Errors
    /// The first thing in `text` that is not valid, with its column and what would be.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        Self::read(text, true)
    }

    /// An expression being typed (`top`'s `/`): never fails. What is not valid yet matches
    /// as text, a number key's value that is not a number matches nothing, a term with an
    /// unknown key is a bare word, and a lone `!` is the word `!`.
    #[must_use]
    pub fn lenient(text: &str) -> Self {
        // Reading leniently turns every fault into a term.
        Self::read(text, false).unwrap_or_default()
    }

    fn read(text: &str, strict: bool) -> Result<Self, FilterError> {
        let mut terms = Vec::new();
        let mut at = 0;
        for token in text.split_whitespace() {
            // Tokens come in order; find each after the previous one for its offset.
            let start = at + text[at..].find(token).unwrap_or(0);
            at = start + token.len();
            terms.push(term(text, start, token, strict)?);
        }
        Ok(Self {
            text: text.to_owned(),
            terms,
        })
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether every term matches the record seen as `f`.
    #[must_use]
    pub fn admits(&self, f: &Fields<'_>) -> bool {
        self.terms.iter().all(|t| t.matches(f))
    }

    /// The observer's own lines (`observer.loss`, `observer.agent`): only `dataset` terms
    /// apply, so only a filter that names datasets can hide them.
    #[must_use]
    pub fn admits_own(&self, dataset: Dataset) -> bool {
        self.admits(&records::own(dataset))
    }
}

/// The 1-based column, in characters, of byte `at` of `text`.
fn column(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

/// What looks like `key:value`: letters and underscores before the first colon. Unless they
/// are a key, a second colon right after makes it an IPv6 address (`beef::1`), a bare word.
fn split_key(body: &str) -> Option<(&str, &str)> {
    let (k, v) = body.split_once(':')?;
    let keyish = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
    (keyish && (Key::named(k).is_some() || !v.starts_with(':'))).then_some((k, v))
}

fn term(text: &str, start: usize, token: &str, strict: bool) -> Result<Term, FilterError> {
    let negated = token.starts_with('!') && token.len() > 1;
    if token == "!" {
        if strict {
            return Err(FilterError::LoneNot {
                column: column(text, start),
            });
        }
        return Ok(word_term(false, "!"));
    }
    let body_at = start + usize::from(negated);
    let body = &token[usize::from(negated)..];
    let Some((name, value)) = split_key(body) else {
        return word(text, body_at, body, negated, strict);
    };
    let Some(key) = Key::named(name) else {
        if strict {
            return Err(FilterError::UnknownKey {
                key: name.to_owned(),
                column: column(text, body_at),
            });
        }
        return Ok(word_term(negated, body));
    };
    let value_at = body_at + name.len() + 1;
    if value.is_empty() {
        if strict {
            return Err(FilterError::NoValue {
                key: key.name(),
                column: column(text, body_at),
                example: key.example(),
            });
        }
        return Ok(Term {
            negated,
            key,
            alts: vec![fallback(key, "")],
        });
    }
    let mut alts = Vec::new();
    for (offset, alt) in alternatives(value) {
        if alt.is_empty() {
            if strict {
                return Err(FilterError::EmptyAlternative {
                    term: token.to_owned(),
                    column: column(text, value_at + offset),
                });
            }
            continue;
        }
        match pattern(key, alt) {
            Ok(p) => alts.push(p),
            Err(expected) if strict => {
                return Err(FilterError::BadValue {
                    key: key.name(),
                    value: alt.to_owned(),
                    column: column(text, value_at + offset),
                    expected,
                });
            }
            Err(_) => alts.push(fallback(key, alt)),
        }
    }
    if alts.is_empty() {
        alts.push(fallback(key, ""));
    }
    Ok(Term { negated, key, alts })
}

/// A bare word, with its comma-separated alternatives.
fn word(
    text: &str,
    at: usize,
    body: &str,
    negated: bool,
    strict: bool,
) -> Result<Term, FilterError> {
    let mut alts = Vec::new();
    for (offset, alt) in alternatives(body) {
        if alt.is_empty() {
            if strict {
                return Err(FilterError::EmptyAlternative {
                    term: body.to_owned(),
                    column: column(text, at + offset),
                });
            }
            continue;
        }
        alts.push(Pat::Word(alt.to_ascii_lowercase(), number(alt)));
    }
    if alts.is_empty() {
        return Ok(word_term(negated, body));
    }
    Ok(Term {
        negated,
        key: Key::Word,
        alts,
    })
}

fn word_term(negated: bool, text: &str) -> Term {
    Term {
        negated,
        key: Key::Word,
        alts: vec![Pat::Word(text.to_ascii_lowercase(), number(text))],
    }
}

/// The comma-separated parts of `value`, with their byte offsets.
fn alternatives(value: &str) -> impl Iterator<Item = (usize, &str)> {
    value.split(',').scan(0, |at, alt| {
        let here = *at;
        *at += alt.len() + 1;
        Some((here, alt))
    })
}

/// Digits only: no sign, no spaces.
fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What a lenient reading makes of a value that is not valid.
fn fallback(key: Key, value: &str) -> Pat {
    if key.numeric() {
        Pat::Never
    } else {
        Pat::Text(value.to_ascii_lowercase())
    }
}

fn one_of(values: &[&'static str], text: &str) -> Option<&'static str> {
    values
        .iter()
        .find(|v| v.eq_ignore_ascii_case(text))
        .copied()
}

/// The value `text` of a `key` term, or what a valid one looks like.
fn pattern(key: Key, text: &str) -> Result<Pat, String> {
    let lower = || text.to_ascii_lowercase();
    match key {
        Key::Port | Key::Sport | Key::Dport => number::<u16>(text)
            .map(|n| Pat::Num(u32::from(n)))
            .ok_or_else(|| "a port is a number from 0 to 65535".to_owned()),
        Key::Pid => number(text)
            .map(Pat::Num)
            .ok_or_else(|| "a process id is a number, e.g. pid:1234".to_owned()),
        Key::Netns => number(text).map(Pat::Num).ok_or_else(|| {
            "a network namespace is its inode number, as `readlink /proc/PID/ns/net` shows \
             it, e.g. netns:4026531840"
                .to_owned()
        }),
        Key::State => {
            let v = lower();
            let known = TCP_STATES
                .iter()
                .flat_map(|(name, ss)| [*name, *ss])
                .chain(ALERT_STATES)
                .any(|s| contains(s, &v));
            known.then_some(Pat::Text(v)).ok_or_else(|| {
                format!(
                    "no state's name contains it: the TCP states are {} (or as ss spells them: \
                     estab, close-wait, …) and an alert's are firing, resolved",
                    TCP_STATES[..12]
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        }
        Key::Addr => address(text).ok_or_else(|| {
            "an address is an IP (10.0.0.1, ::1), an IP and port (10.0.0.1:443, [::1]:443) or a \
             CIDR block (10.0.0.0/8, fd00::/8)"
                .to_owned()
        }),
        Key::Cgroup if text.starts_with('/') => Ok(Pat::Prefix(lower())),
        Key::Comm | Key::Sni | Key::Cgroup => Ok(Pat::Text(lower())),
        Key::Container => (text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Pat::Prefix(lower()))
            .ok_or_else(|| {
                "a container id is hexadecimal: its first digits (docker shows 12) or all 64"
                    .to_owned()
            }),
        Key::Dataset => Dataset::named(text).map(Pat::Dataset).ok_or_else(|| {
            format!(
                "the datasets are {} (`observer.` may be left out)",
                Dataset::ALL.map(Dataset::name).join(", ")
            )
        }),
        Key::Role => one_of(&ROLES, text)
            .map(Pat::Exact)
            .ok_or_else(|| "a role is client, server or unknown".to_owned()),
        Key::ConnState => one_of(&CONN_STATES, text)
            .map(Pat::Exact)
            .ok_or_else(|| format!("Zeek's conn_state is one of {}", CONN_STATES.join(", "))),
        Key::Rule => one_of(&RULES, text)
            .map(Pat::Exact)
            .ok_or_else(|| format!("the anomaly rules are {}", RULES.join(", "))),
        Key::Word => Ok(Pat::Word(lower(), number(text))),
    }
}

fn address(text: &str) -> Option<Pat> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Pat::Ip(ip));
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(Pat::Sock(sock));
    }
    let (ip, bits) = text.split_once('/')?;
    let ip = ip.parse::<IpAddr>().ok()?;
    let bits = number::<u8>(bits)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some(Pat::Cidr(ip, bits))
}

/// Whether `hay` contains `needle` (lowercase), ignoring ASCII case.
fn contains(hay: &str, needle: &str) -> bool {
    needle.is_empty()
        || hay
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn starts_with(hay: &str, prefix: &str) -> bool {
    hay.len() >= prefix.len()
        && hay.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An end written as `top` shows it: `ip:port`, `[v6]:port`, or the bare IP of a host.
fn end_text(e: End, f: impl FnOnce(&str) -> bool) -> bool {
    use std::io::Write as _;
    let mut buf = [0u8; 64];
    let mut out = &mut buf[..];
    let written = match e.port {
        Some(port) => write!(out, "{}", SocketAddr::new(e.ip, port)),
        None => write!(out, "{}", e.ip),
    };
    let len = 64 - out.len();
    written.is_ok() && std::str::from_utf8(&buf[..len]).is_ok_and(f)
}

fn state_matches(state: &str, v: &str) -> bool {
    contains(state, v)
        || TCP_STATES
            .iter()
            .any(|(name, ss)| *name == state && contains(ss, v))
}

impl Term {
    fn matches(&self, f: &Fields<'_>) -> bool {
        if f.ignore.contains(&self.key) {
            return true;
        }
        self.alts.iter().any(|p| alt_matches(self.key, p, f)) != self.negated
    }
}

fn port(p: &Pat, end: Option<End>) -> bool {
    matches!(p, Pat::Num(n) if end.and_then(|e| e.port).is_some_and(|port| u32::from(port) == *n))
}

fn addr(p: &Pat, end: Option<End>) -> bool {
    let Some(e) = end else { return false };
    match p {
        Pat::Ip(ip) => e.ip == *ip,
        Pat::Sock(s) => e.ip == s.ip() && e.port == Some(s.port()),
        Pat::Cidr(net, bits) => in_cidr(e.ip, *net, *bits),
        Pat::Text(v) => end_text(e, |t| contains(t, v)),
        _ => false,
    }
}

fn text(p: &Pat, value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    match p {
        Pat::Text(v) => contains(value, v),
        Pat::Exact(v) => value.eq_ignore_ascii_case(v),
        Pat::Prefix(v) => starts_with(value, v),
        _ => false,
    }
}

fn alt_matches(key: Key, p: &Pat, f: &Fields<'_>) -> bool {
    let num = |value: Option<u32>| matches!(p, Pat::Num(n) if value == Some(*n));
    match key {
        Key::Port => port(p, f.source) || port(p, f.destination),
        Key::Sport => port(p, f.source),
        Key::Dport => port(p, f.destination),
        Key::Pid => num(f.pid),
        Key::Netns => num(f.netns),
        Key::Addr => addr(p, f.source) || addr(p, f.destination),
        Key::State => match p {
            Pat::Text(v) => f.states.any(|s| state_matches(s, v)),
            _ => false,
        },
        Key::Comm => text(p, f.comm),
        Key::Sni => text(p, f.sni),
        Key::Role => text(p, f.role),
        Key::ConnState => text(p, f.conn_state),
        Key::Rule => text(p, f.rule),
        Key::Container => text(p, f.container),
        // A path prefix ends at a component: `/system.slice` is not `/system.slice2`.
        Key::Cgroup => match p {
            Pat::Prefix(v) => f.cgroup.is_some_and(|g| {
                starts_with(g, v)
                    && (g.len() == v.len() || v.ends_with('/') || g.as_bytes()[v.len()] == b'/')
            }),
            _ => text(p, f.cgroup),
        },
        Key::Dataset => match p {
            Pat::Dataset(d) => f.dataset == Some(*d),
            Pat::Text(v) => f.dataset.is_some_and(|d| contains(d.name(), v)),
            _ => false,
        },
        Key::Word => {
            let Pat::Word(v, n) = p else { return false };
            n.is_some_and(|n| f.pid == Some(n))
                || f.comm.is_some_and(|c| contains(c, v))
                || f.states.any(|s| state_matches(s, v))
                || [f.source, f.destination]
                    .into_iter()
                    .flatten()
                    .any(|e| end_text(e, |t| contains(t, v)))
                || f.sni.is_some_and(|s| contains(s, v))
                || f.rule.is_some_and(|r| contains(r, v))
        }
    }
}

#[cfg(test)]
mod tests;
