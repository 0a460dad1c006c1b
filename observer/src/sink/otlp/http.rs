//! A minimal blocking HTTP/1.1 client for one kind of request: a POST with a body, over one
//! kept-alive connection, on the output's writer thread (no async stack, no TLS: a collector
//! in front does TLS). Responses with `Content-Length`, chunked bodies, or a body up to the
//! connection's close are read whole so the connection can be reused.

use std::{
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector that neither reads nor answers for this long is failing.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers past this are refused.
const MAX_HEAD: usize = 64 << 10;
/// Kept of a response body (an error message, a partial-success answer); the rest is read
/// and discarded.
const MAX_BODY: usize = 64 << 10;

pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

pub struct Client {
    addr: String,
    /// The request line and the headers that do not change, up to `Content-Length: `.
    head: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

/// How far a failed exchange got.
struct Failed {
    err: io::Error,
    /// Part of a response came back: the request was not lost on a stale connection.
    answered: bool,
}

impl From<io::Error> for Failed {
    fn from(err: io::Error) -> Self {
        Self {
            err,
            answered: false,
        }
    }
}

impl Client {
    #[must_use]
    pub fn new(addr: &str, path: &str, content_type: &str) -> Self {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: observer/{}\r\nContent-Type: {content_type}\r\nContent-Length: ",
            env!("CARGO_PKG_VERSION")
        );
        Self {
            addr: addr.to_owned(),
            head,
            conn: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Closes the connection; the next request opens a new one (and resolves the name again).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// POSTs `body` and reads the answer. A kept-alive connection the server closed meanwhile
    /// is replaced once, at once. Never returns `BrokenPipe` (which would end the output).
    ///
    /// # Errors
    /// When the server cannot be reached or the exchange breaks.
    pub fn post(&mut self, body: &[u8]) -> io::Result<Response> {
        if self.conn.as_ref().is_some_and(|c| !open(c)) {
            self.conn = None;
        }
        let reused = self.conn.is_some();
        let result = match self.exchange(body) {
            Err(f) if reused && !f.answered => self.exchange(body),
            other => other,
        };
        result.map_err(|f| {
            self.conn = None;
            match f.err.kind() {
                io::ErrorKind::BrokenPipe => io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("{} closed the connection", self.addr),
                ),
                _ => f.err,
            }
        })
    }

    fn exchange(&mut self, body: &[u8]) -> Result<Response, Failed> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let Some(conn) = self.conn.as_mut() else {
            unreachable!("connected above")
        };
        let mut head = String::with_capacity(self.head.len() + 24);
        head.push_str(&self.head);
        head.push_str(itoa::Buffer::new().format(body.len()));
        head.push_str("\r\n\r\n");
        self.buf.clear();
        let sent = conn
            .write_all(head.as_bytes())
            .and_then(|()| conn.write_all(body));
        let answer = sent
            .map_err(Failed::from)
            .and_then(|()| read_response(conn, &mut self.buf));
        match answer {
            Ok((response, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(response)
            }
            Err(e) => {
                // A dead connection is not tried again: the retry connects anew.
                self.conn = None;
                Err(e)
            }
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let mut last = None;
        let addrs = self
            .addr
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {}: {e}", self.addr)))?;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(conn) => {
                    conn.set_nodelay(true)?;
                    conn.set_read_timeout(Some(IO_TIMEOUT))?;
                    conn.set_write_timeout(Some(IO_TIMEOUT))?;
                    return Ok(conn);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("the name has no address"));
        Err(io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e}", self.addr),
        ))
    }
}

/// Whether an idle kept-alive connection is still open: the peer has not closed it (nor sent
/// anything unasked).
fn open(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return false;
    }
    let idle = matches!(conn.peek(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    conn.set_nonblocking(false).is_ok() && idle
}

/// Reads one final response (skipping 1xx ones); also whether the connection may be reused.
fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Response, bool), Failed> {
    loop {
        let end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(bad("its response headers are too long"));
            }
            if fill(conn, buf)? == 0 {
                return Err(Failed {
                    err: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without an answer",
                    ),
                    answered: !buf.is_empty(),
                });
            }
        };
        let head = Head::parse(&buf[..end])?;
        buf.drain(..end);
        if (100..200).contains(&head.status) {
            continue;
        }
        let mut body = Vec::new();
        let framed = if head.status == 204 || head.status == 304 {
            true
        } else if head.chunked {
            read_chunked(conn, buf, &mut body)?;
            true
        } else if let Some(len) = head.length {
            read_exact_into(conn, buf, len, &mut body)?;
            true
        } else {
            // Delimited by the close.
            while fill(conn, buf)? > 0 {
                keep_some(&mut body, buf);
            }
            keep_some(&mut body, buf);
            false
        };
        let response = Response {
            status: head.status,
            reason: head.reason,
            body,
        };
        return Ok((response, framed && head.keep_alive && buf.is_empty()));
    }
}

struct Head {
    status: u16,
    reason: String,
    length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

impl Head {
    fn parse(raw: &[u8]) -> Result<Self, Failed> {
        let text =
            std::str::from_utf8(raw).map_err(|_| bad("its response headers are not text"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| bad(&format!("it did not answer in HTTP/1.x: {status_line:?}")))?;
        let mut head = Self {
            status,
            reason: parts.next().unwrap_or_default().trim().to_owned(),
            length: None,
            chunked: false,
            keep_alive: version != "HTTP/1.0",
        };
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad(&format!("a response header is malformed: {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.length = Some(
                    value
                        .parse()
                        .map_err(|_| bad(&format!("Content-Length is {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.to_ascii_lowercase().ends_with("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    head.keep_alive = false;
                } else if value.contains("keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
        Ok(head)
    }
}

fn bad(what: &str) -> Failed {
    Failed {
        err: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server's answer is not HTTP: {what}"),
        ),
        answered: true,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more into `buf`; how much (0 at the end).
fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failed> {
    let mut chunk = [0_u8; 8192];
    loop {
        match conn.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(Failed {
                    err,
                    answered: !buf.is_empty(),
                });
            }
        }
    }
}

/// Moves `buf` into `body`, keeping at most [`MAX_BODY`] bytes of it.
fn keep_some(body: &mut Vec<u8>, buf: &mut Vec<u8>) {
    let room = MAX_BODY.saturating_sub(body.len()).min(buf.len());
    body.extend_from_slice(&buf[..room]);
    buf.clear();
}

/// Reads `len` body bytes (some may already be in `buf`), keeping the first [`MAX_BODY`].
fn read_exact_into(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut len: usize,
    body: &mut Vec<u8>,
) -> Result<(), Failed> {
    loop {
        let take = len.min(buf.len());
        let room = MAX_BODY.saturating_sub(body.len()).min(take);
        body.extend_from_slice(&buf[..room]);
        buf.drain(..take);
        len -= take;
        if len == 0 {
            return Ok(());
        }
        if fill(conn, buf)? == 0 {
            return Err(bad("the connection closed inside the body"));
        }
    }
}

fn read_chunked(conn: &mut TcpStream, buf: &mut Vec<u8>, body: &mut Vec<u8>) -> Result<(), Failed> {
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return Err(bad("a chunk size line is too long"));
            }
            if fill(conn, buf)? == 0 {
                return Err(bad("the connection closed inside a chunked body"));
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| bad(&format!("a chunk size is {line:?}")))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        return Ok(());
                    }
                } else if buf.len() > MAX_HEAD {
                    return Err(bad("a chunked body's trailers are too long"));
                } else if fill(conn, buf)? == 0 {
                    return Err(bad("the connection closed inside a chunked body"));
                }
            }
        }
        read_exact_into(conn, buf, size, body)?;
        let mut crlf = Vec::with_capacity(2);
        read_exact_into(conn, buf, 2, &mut crlf)?;
        if crlf != b"\r\n" {
            return Err(bad("a chunk does not end where its size says"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, net::TcpListener, thread};

    use super::*;

    /// A server that reads each request whole and writes the next canned answer, closing the
    /// connection after it when told; what it received.
    fn server(answers: Vec<(&'static [u8], bool)>) -> (String, thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = thread::spawn(move || {
            let mut got = Vec::new();
            let mut answers = answers.into_iter().peekable();
            while answers.peek().is_some() {
                let (conn, _) = listener.accept().expect("accept");
                let mut reader = io::BufReader::new(conn);
                loop {
                    let mut head = Vec::new();
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).expect("read") == 0 {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("Content-Length: ") {
                            len = v.trim().parse().expect("length");
                        }
                        head.extend_from_slice(line.as_bytes());
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).expect("body");
                    head.extend_from_slice(&body);
                    got.push(head);
                    let Some((answer, close)) = answers.next() else {
                        break;
                    };
                    reader.get_mut().write_all(answer).expect("answer");
                    if close || answers.peek().is_none() {
                        break;
                    }
                }
            }
            got
        });
        (addr, handle)
    }

    #[test]
    fn posts_over_one_kept_alive_connection_and_reads_each_kind_of_body() {
        let (addr, server) = server(vec![
            (
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..],
                false,
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n2;x=y\r\n!!\r\n0\r\nT: v\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            // Delimited by the close.
            (b"HTTP/1.0 400 Bad Request\r\n\r\nno", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        ]);
        let mut client = Client::new(&addr, "/v1/logs", "application/x-protobuf");
        let mut answers = Vec::new();
        for body in [&b"one"[..], b"two", b"", b"four", b"five"] {
            let r = client.post(body).expect("post");
            answers.push((
                r.status,
                r.reason,
                String::from_utf8(r.body).expect("utf-8"),
            ));
        }
        let got = server.join().expect("server");
        assert_eq!(
            answers,
            [
                (200, "OK".into(), "abc".into()),
                (503, "Service Unavailable".into(), "busy!!".into()),
                (204, "No Content".into(), String::new()),
                (400, "Bad Request".into(), "no".into()),
                (200, "OK".into(), String::new()),
            ]
        );
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            String::from_utf8_lossy(&got[0]),
            format!(
                "POST /v1/logs HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: observer/{version}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\n\r\none"
            )
        );
        assert_eq!(got.len(), 5);
        assert!(got[4].ends_with(b"Content-Length: 4\r\n\r\nfive"));
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_and_nothing_is_sent_twice() {
        let (addr, server) = server(vec![
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        ]);
        let mut client = Client::new(&addr, "/", "text/plain");
        assert_eq!(client.post(b"a").expect("first").status, 200);
        // The server closed its end after answering (without saying so).
        thread::sleep(Duration::from_millis(50));
        assert_eq!(client.post(b"b").expect("second").status, 200);
        assert_eq!(server.join().expect("server").len(), 2);
    }

    #[test]
    fn a_refused_connection_is_an_error_that_is_retried_not_a_broken_pipe() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let mut client = Client::new(&addr, "/", "text/plain");
        let err = client.post(b"x").err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {addr}: ")),
            "{err}"
        );
    }
}
