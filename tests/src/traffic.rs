//! Traffic the tests make in their namespaces, with known counts.

use std::process::Command;

use crate::{NetNs, Peer};

/// One connection on loopback in `ns` by two peer processes: connect, `up` bytes from the
/// client (none when 0), the client closes first. Returns the server's port.
#[must_use]
pub fn one_connection(ns: &NetNs, up: u64) -> u16 {
    let mut server = Peer::spawn(ns, "srv");
    let mut client = Peer::spawn(ns, "cli");
    let port = server.port("listen 4 127.0.0.1", "port");
    client.ok(&format!("connect 4 127.0.0.1 {port}"));
    server.ok("accept");
    if up > 0 {
        client.ok(&format!("send {up}"));
        server.ok(&format!("recv {up}"));
    }
    client.ok("close");
    server.ok("wait_eof");
    server.ok("close");
    port
}

/// `n` connections in `ns`, one after the other by one process: connect, a byte each way,
/// close. Two closed records each.
pub fn churn(ns: &NetNs, n: u32) {
    let script = format!(
        "import socket\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(64)\n\
         for _ in range({n}):\n\
         \x20   c = socket.create_connection(l.getsockname()); s = l.accept()[0]\n\
         \x20   c.sendall(b'x'); assert s.recv(1) == b'x'\n\
         \x20   s.sendall(b'y'); assert c.recv(1) == b'y'\n\
         \x20   c.close(); s.close()\n"
    );
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", &script])
        .status()
        .expect("python");
    assert!(status.success(), "the churn of {n} connections failed");
}
