//! A scripted TCP endpoint (`tests/peers/tcp_peer.py`) in its own process inside a namespace.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::Value;

use crate::NetNs;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/tcp_peer.py")
}

pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub comm: String,
}

impl Peer {
    /// Starts a peer in `ns` whose process is named `comm` (at most 15 bytes).
    #[must_use]
    pub fn spawn(ns: &NetNs, comm: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-u"])
            .arg(script())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = Self {
            child,
            stdin,
            stdout,
            pid: 0,
            comm: comm.to_owned(),
        };
        let hello = peer.read_reply("start");
        peer.pid = u32::try_from(hello["pid"].as_u64().expect("pid")).expect("pid fits");
        peer.ok(&format!("name {comm}"));
        peer
    }

    fn read_reply(&mut self, cmd: &str) -> Value {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{}: reading reply to {cmd}: {e}", self.comm));
        assert!(
            !line.is_empty(),
            "{}: exited before replying to {cmd}",
            self.comm
        );
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: bad reply {line:?}: {e}", self.comm))
    }

    /// Sends one command and returns its reply, whatever it says.
    pub fn cmd(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}")
            .unwrap_or_else(|e| panic!("{}: sending {cmd}: {e}", self.comm));
        self.read_reply(cmd)
    }

    /// Sends one command that must succeed.
    pub fn ok(&mut self, cmd: &str) -> Value {
        let reply = self.cmd(cmd);
        assert_eq!(reply["ok"], true, "{}: `{cmd}` failed: {reply}", self.comm);
        reply
    }

    /// A port number from a reply field.
    pub fn port(&mut self, cmd: &str, key: &str) -> u16 {
        let reply = self.ok(cmd);
        u16::try_from(
            reply[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in {reply}")),
        )
        .expect("port")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
