//! TLS handshakes: the wire's hellos and the libraries' handshake calls, joined per socket
//! cookie into facts (`TlsFacts`) for the `observer.tls` record and the connection record.
//! Pure, like the tracker that owns it: events in, records out, no clock.

pub mod hello;
pub mod libs;
pub mod names;

use std::collections::HashMap;

use observer_common::{
    Endpoints, TlsAlpn, TlsHandshake, TlsHello, conn_flag, tls_dir, tls_lib, tls_outcome,
};

use self::hello::{Alert, ClientHello, Message, ServerHello};

/// Wire facts older than this with no socket close are forgotten (a socket the kernel map
/// never tracked, so no close event comes).
const FORGET_NS: u64 = 600_000_000_000;
/// How long a TLS 1.3 handshake's record waits for the application to ask its library for the
/// negotiated ALPN protocol (encrypted on the wire). Clients and servers that use ALPN ask right
/// after the handshake; the wait is measured on event timestamps, so replay agrees.
pub const ALPN_WAIT_NS: u64 = 200_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRole {
    Client,
    Server,
}

impl TlsRole {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRole::Client => "client",
            TlsRole::Server => "server",
        }
    }
}

/// What one socket's handshake showed, in ECS terms (`tls.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    pub established: bool,
    pub version: Option<u16>,
    pub cipher: Option<u16>,
    pub curve: Option<u16>,
    pub server_name: Option<String>,
    pub next_protocol: Option<String>,
    /// ALPN protocols the client offered.
    pub alpn_offered: Vec<String>,
    pub resumed: Option<bool>,
    pub handshake_duration_us: Option<u64>,
    /// "openssl/3.0.19", "gnutls/3.7.9"; none when only the wire was seen.
    pub library: Option<String>,
    pub error: Option<String>,
    pub role: Option<TlsRole>,
    /// Where the facts come from: "uprobe+wire", "uprobe" or "wire".
    pub source: &'static str,
}

/// The thread that ran (or, wire-only, sent) the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProcess {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

impl TlsProcess {
    #[must_use]
    pub fn name(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// One `observer.tls` record, before its uid is known to the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRecord {
    /// The connection's identity for `Tracker::uid`: (cookie, birth), when the socket is
    /// tracked.
    pub cookie_birth: Option<(u64, u64)>,
    pub uid: Option<crate::track::record::Uid>,
    pub cookie: u64,
    pub netns: u32,
    /// The socket's (local, remote) ends, when known.
    pub tuple: Option<Endpoints>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub process: Option<TlsProcess>,
    pub facts: TlsFacts,
}

#[derive(Debug, Default)]
struct Socket {
    birth_ns: u64,
    netns: u32,
    tuple: Option<Endpoints>,
    flags: u16,
    client_hello: Option<(u8, ClientHello)>,
    server_hello: Option<ServerHello>,
    /// The first alert seen and its direction.
    alert: Option<(u8, Alert)>,
    first_ns: u64,
    last_ns: u64,
    /// The sender of the first egress hello.
    egress_pid_tgid: u64,
    handshake: Option<TlsHandshake>,
    /// The ALPN protocol the library reported (`TlsAlpn`).
    alpn: Option<String>,
    reported: bool,
}

/// Per-socket TLS state, by socket cookie.
#[derive(Default)]
pub struct TlsTable {
    sockets: HashMap<u64, Socket>,
    /// Socket cookie of each library session, by (pid, session), for ALPN reports.
    sessions: HashMap<(u32, u64), u64>,
    /// Records waiting for their ALPN protocol: (due, session key, record).
    held: Vec<(u64, (u32, u64), TlsRecord)>,
    /// Names of the library files the uprobes were attached to, by `lib_file`.
    pub libraries: Vec<String>,
}

impl TlsTable {
    pub fn hello(&mut self, h: &TlsHello) {
        let s = self.sockets.entry(h.cookie).or_default();
        if s.first_ns == 0 {
            s.first_ns = h.header.ts_ns;
        }
        s.last_ns = h.header.ts_ns;
        if h.birth_ns != 0 {
            s.birth_ns = h.birth_ns;
            s.netns = h.netns;
            s.flags = h.flags;
            if h.flags & conn_flag::TUPLE_VALID != 0 {
                s.tuple = Some(h.tuple);
            }
        }
        if h.direction == tls_dir::EGRESS && s.egress_pid_tgid == 0 {
            s.egress_pid_tgid = h.header.pid_tgid;
        }
        let n = (h.captured as usize).min(h.data.len());
        for msg in hello::parse_segment(&h.data[..n]) {
            match msg {
                Message::ClientHello(ch) => {
                    s.client_hello.get_or_insert((h.direction, ch));
                }
                Message::ServerHello(sh) if !sh.retry => s.server_hello = Some(sh),
                Message::ServerHello(_) => {}
                Message::Alert(a) => {
                    s.alert.get_or_insert((h.direction, a));
                }
            }
        }
    }

    /// A library's handshake ended: its record, joined to its socket's hellos; `None` while
    /// it waits for its ALPN protocol (`alpn`, `due`).
    pub fn handshake(&mut self, h: &TlsHandshake) -> Option<TlsRecord> {
        let key = (split(h.header.pid_tgid).0, h.session);
        let record = self.handshake_record(h);
        if h.cookie != 0 {
            if self.sessions.len() > 4096 {
                self.sessions.clear();
            }
            self.sessions.insert(key, h.cookie);
        }
        let f = &record.facts;
        if f.established
            && f.version.is_some_and(|v| v >= 0x0304)
            && !f.alpn_offered.is_empty()
            && f.next_protocol.is_none()
        {
            self.held
                .push((h.header.ts_ns.saturating_add(ALPN_WAIT_NS), key, record));
            return None;
        }
        Some(record)
    }

    /// The application learnt its ALPN protocol: a held record is complete.
    pub fn alpn(&mut self, a: &TlsAlpn) -> Option<TlsRecord> {
        let key = (split(a.header.pid_tgid).0, a.session);
        let n = usize::try_from(a.len).unwrap_or(0).min(a.protocol.len());
        let protocol = String::from_utf8_lossy(&a.protocol[..n]).into_owned();
        if let Some(s) = self
            .sessions
            .remove(&key)
            .and_then(|cookie| self.sockets.get_mut(&cookie))
        {
            s.alpn = Some(protocol.clone());
        }
        let i = self.held.iter().position(|(_, k, _)| *k == key)?;
        let (_, _, mut record) = self.held.remove(i);
        record.facts.next_protocol = Some(protocol);
        Some(record)
    }

    /// The earliest end of the records still held, if any.
    #[must_use]
    pub fn held_since(&self) -> Option<u64> {
        self.held.iter().map(|(_, _, r)| r.end_ns).min()
    }

    /// Held records whose wait ended by `now_ns`.
    pub fn due(&mut self, now_ns: u64) -> Vec<TlsRecord> {
        let (ready, waiting) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(due, _, _)| *due <= now_ns);
        self.held = waiting;
        ready.into_iter().map(|(_, _, record)| record).collect()
    }

    fn handshake_record(&mut self, h: &TlsHandshake) -> TlsRecord {
        let process = Some(TlsProcess {
            pid: split(h.header.pid_tgid).0,
            tid: split(h.header.pid_tgid).1,
            comm: h.comm,
        });
        if h.cookie == 0 {
            let socket = Socket {
                handshake: Some(*h),
                ..Socket::default()
            };
            return self.record(&socket, 0, process);
        }
        let s = self.sockets.entry(h.cookie).or_default();
        s.handshake = Some(*h);
        s.reported = true;
        let s = &self.sockets[&h.cookie];
        self.record(s, h.cookie, process)
    }

    /// The socket closed: the facts for its connection record, and, when no library reported
    /// its handshake, an `observer.tls` record from the wire alone.
    pub fn closed(&mut self, cookie: u64) -> Option<(TlsFacts, Option<TlsRecord>)> {
        let s = self.sockets.remove(&cookie)?;
        if s.client_hello.is_none() && s.server_hello.is_none() && s.handshake.is_none() {
            return None;
        }
        let record = (!s.reported).then(|| {
            // Egress runs in the sender's context; its name is left to the connection record.
            let process = (s.egress_pid_tgid != 0).then_some(TlsProcess {
                pid: split(s.egress_pid_tgid).0,
                tid: split(s.egress_pid_tgid).1,
                comm: [0; 16],
            });
            self.record(&s, cookie, process)
        });
        Some((self.facts(&s), record))
    }

    /// What the handshake of a socket still open showed so far, when a hello or a library
    /// call was seen (`observer top`).
    #[must_use]
    pub fn open(&self, cookie: u64) -> Option<TlsFacts> {
        let s = self.sockets.get(&cookie)?;
        (s.client_hello.is_some() || s.server_hello.is_some() || s.handshake.is_some())
            .then(|| self.facts(s))
    }

    /// Forgets sockets whose close was never seen.
    pub fn expire(&mut self, now_ns: u64) {
        if self.sockets.len() > 4096 {
            self.sockets
                .retain(|_, s| s.last_ns.saturating_add(FORGET_NS) > now_ns);
        }
    }

    fn record(&self, s: &Socket, cookie: u64, process: Option<TlsProcess>) -> TlsRecord {
        let (start_ns, end_ns) = match &s.handshake {
            Some(h) => (h.start_ns, h.header.ts_ns),
            None => (s.first_ns, s.last_ns),
        };
        TlsRecord {
            cookie_birth: (cookie != 0 && s.birth_ns != 0).then_some((cookie, s.birth_ns)),
            uid: None,
            cookie,
            netns: s.netns,
            tuple: s.tuple,
            start_ns,
            end_ns,
            process,
            facts: self.facts(s),
        }
    }

    fn facts(&self, s: &Socket) -> TlsFacts {
        let ch = s.client_hello.as_ref();
        let sh = s.server_hello.as_ref();
        let wire = ch.is_some() || sh.is_some();
        let mut f = TlsFacts {
            version: sh.map(|sh| sh.version),
            cipher: sh.map(|sh| sh.cipher),
            curve: sh.and_then(|sh| sh.group),
            server_name: ch.and_then(|(_, ch)| ch.server_name.clone()),
            next_protocol: sh.and_then(|sh| sh.alpn.clone()).or_else(|| s.alpn.clone()),
            alpn_offered: ch.map(|(_, ch)| ch.alpn.clone()).unwrap_or_default(),
            resumed: sh.map(|sh| resumed(ch.map(|(_, ch)| ch), sh)),
            role: ch.map(|(dir, _)| {
                if *dir == tls_dir::EGRESS {
                    TlsRole::Client
                } else {
                    TlsRole::Server
                }
            }),
            source: "wire",
            ..TlsFacts::default()
        };
        let fatal_alert = s.alert.filter(|(_, a)| a.level == 2 || a.description != 0);
        let alert_error = fatal_alert.map(|(dir, a)| {
            let way = if dir == tls_dir::EGRESS {
                "sent"
            } else {
                "received"
            };
            format!("alert {way}: {}", names::alert(a.description))
        });
        if let Some(h) = &s.handshake {
            f.source = if wire { "uprobe+wire" } else { "uprobe" };
            f.established = h.outcome == tls_outcome::ESTABLISHED;
            f.handshake_duration_us = Some(h.header.ts_ns.saturating_sub(h.start_ns) / 1000);
            f.library = Some(self.library(h));
            if f.role.is_none() {
                f.role = role_of_conn(s.flags);
            }
            if !f.established {
                // The alert names the cause best; GnuTLS's error code says the rest.
                f.error = Some(alert_error.or_else(|| gnutls_error(h)).unwrap_or_else(|| {
                    if h.outcome == tls_outcome::ABANDONED {
                        "handshake abandoned: the connection ended before it completed".to_owned()
                    } else {
                        format!("handshake failed: the library returned {}", h.ret)
                    }
                }));
            }
        } else {
            f.established = sh.is_some() && fatal_alert.is_none();
            if !f.established {
                f.error = Some(alert_error.unwrap_or_else(|| "no ServerHello".to_owned()));
            }
            if f.role.is_none() {
                f.role = role_of_conn(s.flags);
            }
        }
        f
    }

    fn library(&self, h: &TlsHandshake) -> String {
        self.libraries
            .get(usize::from(h.lib_file))
            .cloned()
            .unwrap_or_else(|| {
                if h.library == tls_lib::GNUTLS {
                    "gnutls"
                } else {
                    "openssl"
                }
                .to_owned()
            })
    }
}

/// (tgid, tid) of `bpf_get_current_pid_tgid()`.
fn split(pid_tgid: u64) -> (u32, u32) {
    let [thread, group] =
        [pid_tgid & 0xffff_ffff, pid_tgid >> 32].map(|v| u32::try_from(v).unwrap_or(0));
    (group, thread)
}

fn role_of_conn(flags: u16) -> Option<TlsRole> {
    if flags & conn_flag::ROLE_CLIENT != 0 {
        Some(TlsRole::Client)
    } else if flags & conn_flag::ROLE_SERVER != 0 {
        Some(TlsRole::Server)
    } else {
        None
    }
}

/// TLS 1.3 resumes with a pre-shared key; TLS 1.2 by echoing the client's session id.
fn resumed(ch: Option<&ClientHello>, sh: &ServerHello) -> bool {
    if sh.version >= 0x0304 {
        sh.psk
    } else {
        !sh.session_id.is_empty() && ch.is_some_and(|ch| ch.session_id == sh.session_id)
    }
}

fn gnutls_error(h: &TlsHandshake) -> Option<String> {
    (h.library == tls_lib::GNUTLS && h.outcome == tls_outcome::FAILED)
        .then(|| names::gnutls_error(h.ret))
}

#[cfg(test)]
mod tests;
