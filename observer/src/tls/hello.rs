//! Parses the cleartext start of a TLS connection: `ClientHello`, `ServerHello` (and
//! `HelloRetryRequest`) and plaintext alerts (RFC 8446 §4.1, RFC 5246 §7.4.1, RFC 6066 §3,
//! RFC 7301). Pure: bytes in, facts out. Truncated input yields what was complete; anything
//! after the first record that is neither handshake, alert nor `ChangeCipherSpec` (application
//! data, or TLS 1.3's encrypted handshake) is never looked at.

/// What a `ClientHello` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub server_name: Option<String>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    pub session_id: Vec<u8>,
    /// The highest version offered (`supported_versions`, else the legacy field).
    pub max_version: u16,
    /// A `pre_shared_key` extension: the client tries to resume.
    pub offers_psk: bool,
}

/// What a `ServerHello` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// The negotiated version (`supported_versions`, else the legacy field).
    pub version: u16,
    pub cipher: u16,
    /// The key-exchange group (TLS 1.3 `key_share`).
    pub group: Option<u16>,
    pub session_id: Vec<u8>,
    /// TLS 1.3: the server accepted a pre-shared key (resumption).
    pub psk: bool,
    /// TLS 1.2 and below: the ALPN protocol chosen (TLS 1.3 encrypts it).
    pub alpn: Option<String>,
    /// This is a `HelloRetryRequest`, not a real `ServerHello`.
    pub retry: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    ClientHello(ClientHello),
    ServerHello(ServerHello),
    Alert(Alert),
}

const CONTENT_CCS: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;

/// `ServerHello.random` of a `HelloRetryRequest` (RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// A cursor that fails (returns `None`) instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    /// What is left, possibly shorter than declared (a truncated capture).
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// GREASE values (RFC 8701) are placeholders, never a real choice.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// Every hello and alert at the start of one captured segment.
#[must_use]
pub fn parse_segment(data: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut r = Reader(data);
    while let (Some(content), Some(_version)) = (r.u8(), r.u16()) {
        let Some(len) = r.u16() else { break };
        let body = r.take(usize::from(len)).unwrap_or_else(|| r.rest());
        match content {
            CONTENT_HANDSHAKE => handshake(body, &mut out),
            CONTENT_ALERT => {
                if let [level, description] = *body {
                    out.push(Message::Alert(Alert { level, description }));
                }
            }
            CONTENT_CCS => {}
            _ => break,
        }
    }
    out
}

fn handshake(body: &[u8], out: &mut Vec<Message>) {
    let mut r = Reader(body);
    while let (Some(kind), Some(len)) = (r.u8(), r.u24()) {
        let msg = r.take(len).unwrap_or_else(|| r.rest());
        match kind {
            1 => out.extend(client_hello(msg).map(Message::ClientHello)),
            2 => out.extend(server_hello(msg).map(Message::ServerHello)),
            // Anything else is of no interest, and may be encrypted (TLS 1.2 Finished).
            _ => return,
        }
    }
}

/// Each extension's type and body, until the list or the capture ends.
fn extensions(r: &mut Reader<'_>, mut f: impl FnMut(u16, &[u8])) {
    let Some(len) = r.u16() else { return };
    let all = r.take(usize::from(len)).unwrap_or_else(|| r.rest());
    let mut r = Reader(all);
    while let (Some(kind), Some(len)) = (r.u16(), r.u16()) {
        let Some(body) = r.take(usize::from(len)) else {
            return;
        };
        f(kind, body);
    }
}

fn client_hello(msg: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(msg);
    let legacy = r.u16()?;
    r.take(32)?;
    let session_id = r.vec8()?.to_vec();
    r.vec16()?;
    r.vec8()?;
    let mut ch = ClientHello {
        session_id,
        max_version: legacy,
        ..ClientHello::default()
    };
    extensions(&mut r, |kind, body| {
        let mut b = Reader(body);
        match kind {
            EXT_SERVER_NAME => {
                let mut list = Reader(b.vec16().unwrap_or_default());
                while let Some(name_type) = list.u8() {
                    let Some(name) = list.vec16() else { break };
                    if name_type == 0 {
                        ch.server_name = Some(String::from_utf8_lossy(name).into_owned());
                        break;
                    }
                }
            }
            EXT_ALPN => ch.alpn = alpn_list(&mut b),
            EXT_SUPPORTED_VERSIONS => {
                let mut list = Reader(b.vec8().unwrap_or_default());
                while let Some(v) = list.u16() {
                    if !is_grease(v) && v > ch.max_version {
                        ch.max_version = v;
                    }
                }
            }
            EXT_PRE_SHARED_KEY => ch.offers_psk = true,
            _ => {}
        }
    });
    Some(ch)
}

fn alpn_list(b: &mut Reader<'_>) -> Vec<String> {
    let mut list = Reader(b.vec16().unwrap_or_default());
    let mut out = Vec::new();
    while let Some(p) = list.vec8() {
        out.push(String::from_utf8_lossy(p).into_owned());
    }
    out
}

fn server_hello(msg: &[u8]) -> Option<ServerHello> {
    let mut r = Reader(msg);
    let legacy = r.u16()?;
    let random = r.take(32)?;
    let session_id = r.vec8()?.to_vec();
    let cipher = r.u16()?;
    r.u8()?;
    let mut sh = ServerHello {
        version: legacy,
        cipher,
        session_id,
        retry: random == HRR_RANDOM,
        ..ServerHello::default()
    };
    extensions(&mut r, |kind, body| {
        let mut b = Reader(body);
        match kind {
            EXT_SUPPORTED_VERSIONS => sh.version = b.u16().unwrap_or(legacy),
            EXT_KEY_SHARE => sh.group = b.u16(),
            EXT_PRE_SHARED_KEY => sh.psk = true,
            EXT_ALPN => sh.alpn = alpn_list(&mut b).into_iter().next(),
            _ => {}
        }
    });
    Some(sh)
}

#[cfg(test)]
#[path = "hello_tests.rs"]
mod tests;
