//! The right process on both ends, with real servers: nginx (master + worker), a pre-fork
//! python server whose children accept, curl as the client; executables, cgroups and
//! container ids; and both ends joined across two network namespaces.
//!
//! tcplife and tcpstates (libbpf-tools) name curl as the owner of the server socket here: its
//! state changes run in softirq on curl's CPU. observer names the process that accepted it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{NetNs, Observer, Peer, field, observer::scratch, privileged, sh, wait_for};
use serde_json::Value;

/// A curl run inside `ns`: its pid and what it says it sent and received.
struct Curl {
    pid: u32,
    local_port: u16,
    request: u64,
    response: u64,
}

fn curl(ns: &NetNs, url: &str) -> Curl {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
        ])
        .arg("%{size_request} %{size_header} %{size_download} %{local_port}")
        .arg(url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    // `ip netns exec` execs curl: same pid.
    let pid = child.id();
    let out = child.wait_with_output().expect("curl runs");
    assert!(out.status.success(), "curl {url} failed");
    let n: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().expect("number"))
        .collect();
    Curl {
        pid,
        local_port: u16::try_from(n[3]).expect("port"),
        request: n[0],
        response: n[1] + n[2],
    }
}

/// The cgroup v2 mount point.
fn cgroup2() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup2 is mounted")
}

/// This process's cgroup v2 path.
fn own_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .expect("cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .expect("a v2 line")
}

/// nginx (master + one worker) on 127.0.0.1:8080 inside `ns`, in the cgroup `cgroup` (a path
/// under the cgroup2 mount, made here).
struct Nginx {
    master: Child,
    worker: u32,
    dir: PathBuf,
    cgroup_dir: PathBuf,
}

impl Nginx {
    fn start(ns: &NetNs, cgroup: &str) -> Self {
        let dir = scratch("nginx");
        fs::create_dir_all(&dir).expect("nginx dir");
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:8080; location / {{ return 200 \"hello from nginx\\n\"; }} }} }}\n",
                d = dir.display()
            ),
        )
        .expect("nginx.conf");
        let cgroup_dir = cgroup2().join(cgroup.trim_start_matches('/'));
        fs::create_dir_all(&cgroup_dir).expect("make the cgroup");
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} nginx -c {} -p {}",
            cgroup_dir.display(),
            ns.name,
            conf.display(),
            dir.display()
        );
        let master = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        let master_pid = master.id();
        let worker = wait_for(Duration::from_secs(10), "the nginx worker", || {
            let kids = fs::read_to_string(format!("/proc/{master_pid}/task/{master_pid}/children"))
                .ok()?;
            kids.split_whitespace().next()?.parse().ok()
        });
        ns.wait_tcp_state(8080, "listening");
        Self {
            master,
            worker,
            dir,
            cgroup_dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits.
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(
                libc::pid_t::try_from(self.master.id()).unwrap_or(0),
                libc::SIGTERM,
            )
        };
        let _ = self.master.wait();
        for _ in 0..500 {
            let procs =
                fs::read_to_string(self.cgroup_dir.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.cgroup_dir);
        if let Some(parent) = self.cgroup_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn by_role<'a>(records: &'a [Value], role: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| field(r, "conn.role") == role)
        .collect()
}

#[test]
fn curl_to_nginx_names_the_worker_that_accepted_with_its_container() {
    if !privileged("curl_to_nginx_names_the_worker_that_accepted_with_its_container") {
        return;
    }
    let ns = NetNs::new("nginx");
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let cgroup = format!("/observer-test-{}/docker-{id}.scope", std::process::id());
    let nginx = Nginx::start(&ns, &cgroup);
    let obs = Observer::start(&ns, &[]);
    let c = curl(&ns, "http://127.0.0.1:8080/");
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (client, server) = (
        by_role(&records, "client")[0],
        by_role(&records, "server")[0],
    );
    // The client: curl, in this test's cgroup.
    assert_eq!(field(client, "process.pid"), c.pid, "{client}");
    assert_eq!(field(client, "process.name"), "curl", "{client}");
    assert_eq!(
        field(client, "process.executable"),
        "/usr/bin/curl",
        "{client}"
    );
    assert_eq!(
        field(client, "process.cgroup"),
        own_cgroup().as_str(),
        "{client}"
    );
    assert_eq!(field(client, "container.id"), &Value::Null, "{client}");
    // The server: nginx's worker (not its master, not curl), in the container's cgroup.
    assert_eq!(field(server, "process.pid"), nginx.worker, "{server}");
    assert_eq!(field(server, "process.name"), "nginx", "{server}");
    assert_eq!(
        field(server, "process.executable"),
        "/usr/sbin/nginx",
        "{server}"
    );
    assert_eq!(field(server, "process.cgroup"), cgroup.as_str(), "{server}");
    assert_eq!(field(server, "container.id"), id.as_str(), "{server}");
    for r in [client, server] {
        assert_eq!(field(r, "source.port"), c.local_port, "{r}");
        assert_eq!(field(r, "destination.port"), 8080, "{r}");
        assert_eq!(field(r, "source.bytes"), c.request, "{r}");
        assert_eq!(field(r, "destination.bytes"), c.response, "{r}");
        assert_eq!(field(r, "conn.state"), "SF", "{r}");
    }
    // The worker runs as nobody.
    assert_eq!(field(client, "user.id"), "0", "{client}");
    assert_eq!(field(server, "user.id"), "65534", "{server}");
    assert_eq!(field(client, "conn.peer_uid"), field(server, "conn.uid"));
    assert_eq!(field(server, "conn.peer_uid"), field(client, "conn.uid"));
    assert_eq!(field(client, "peer.process.pid"), nginx.worker);
    assert_eq!(field(server, "peer.process.pid"), c.pid);
    assert_eq!(field(server, "peer.process.name"), "curl");
}

#[test]
fn a_prefork_server_child_that_accepted_owns_the_connection() {
    if !privileged("a_prefork_server_child_that_accepted_owns_the_connection") {
        return;
    }
    let ns = NetNs::new("prefork");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/prefork_http.py");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-u"])
        .arg(&script)
        .args(["2", "1", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("prefork server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json")
    };
    let hello = next();
    let port = hello["listening"].as_u64().expect("port");
    let parent = hello["pid"].as_u64().expect("pid");
    let children: Vec<u64> = (0..2)
        .map(|_| next()["child"].as_u64().expect("child"))
        .collect();
    let obs = Observer::start(&ns, &[]);
    let url = format!("http://127.0.0.1:{port}/");
    let curls = [curl(&ns, &url), curl(&ns, &url)];
    // Who accepted what, as the children say.
    let mut accepted = std::collections::HashMap::new();
    while accepted.len() < 2 {
        let l = next();
        if let Some(p) = l["accepted"].as_u64() {
            accepted.insert(p, l["pid"].as_u64().expect("pid"));
        }
    }
    let records = obs.wait_records("observer.connection", 4);
    obs.stop().assert_clean();
    drop(server.stdin.take());
    let _ = server.wait();
    assert_eq!(records.len(), 4, "{records:#?}");
    let servers = by_role(&records, "server");
    assert_eq!(servers.len(), 2);
    for c in &curls {
        let s = servers
            .iter()
            .find(|s| field(s, "source.port") == c.local_port)
            .unwrap_or_else(|| panic!("no server record for port {}", c.local_port));
        let child = accepted[&u64::from(c.local_port)];
        assert!(children.contains(&child));
        assert_eq!(field(s, "process.pid"), child, "{s}");
        assert_ne!(field(s, "process.pid"), parent, "{s}");
        assert_eq!(field(s, "process.name"), "python3", "{s}");
        assert_eq!(field(s, "process.executable"), "/usr/bin/python3.11", "{s}");
        assert_eq!(field(s, "destination.bytes"), c.response, "{s}");
        assert_eq!(field(s, "source.bytes"), c.request, "{s}");
        assert_eq!(field(s, "peer.process.pid"), c.pid, "{s}");
    }
    for c in by_role(&records, "client") {
        assert_eq!(field(c, "process.name"), "curl", "{c}");
    }
}

#[test]
fn two_namespaces_of_this_host_join_their_ends() {
    if !privileged("two_namespaces_of_this_host_join_their_ends") {
        return;
    }
    let (a, b) = (NetNs::new("vetha"), NetNs::new("vethb"));
    let (va, vb) = (
        format!("oa{}", std::process::id() % 100_000),
        format!("ob{}", std::process::id() % 100_000),
    );
    sh(
        "ip",
        &[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ],
    );
    sh(
        "ip",
        &["-n", &a.name, "addr", "add", "10.77.0.1/24", "dev", &va],
    );
    sh(
        "ip",
        &["-n", &b.name, "addr", "add", "10.77.0.2/24", "dev", &vb],
    );
    sh("ip", &["-n", &a.name, "link", "set", &va, "up"]);
    sh("ip", &["-n", &b.name, "link", "set", &vb, "up"]);
    let (mut client, mut server) = (Peer::spawn(&a, "veth-cli"), Peer::spawn(&b, "veth-srv"));
    let port = server.port("listen 4 10.77.0.2", "port");
    let obs = Observer::start_with(&["run", "--port", &port.to_string()]);
    let cport = client.port(&format!("connect 4 10.77.0.2 {port}"), "local_port");
    server.ok("accept");
    client.ok("send 300");
    assert_eq!(server.ok("recv 300")["got"], 300);
    client.ok("close");
    assert_eq!(server.ok("wait_eof")["extra"], 0);
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    assert_eq!(records.len(), 2, "{records:#?}");
    let (c, s) = (
        by_role(&records, "client")[0],
        by_role(&records, "server")[0],
    );
    assert_ne!(field(c, "conn.netns"), field(s, "conn.netns"));
    assert_eq!(field(c, "source.port"), cport);
    assert_eq!(field(c, "conn.peer_uid"), field(s, "conn.uid"));
    assert_eq!(field(s, "conn.peer_uid"), field(c, "conn.uid"));
    assert_eq!(field(c, "peer.process.pid"), server.pid);
    assert_eq!(field(s, "peer.process.pid"), client.pid);
    assert_eq!(
        field(c, "network.community_id"),
        field(s, "network.community_id")
    );
    assert_eq!(field(s, "source.bytes"), 300);
}

/// Runs a python script in `ns`; returns the JSON lines it printed.
fn python(ns: &NetNs, script: &str) -> Vec<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", script])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn a_socket_passed_to_another_process_belongs_to_the_one_that_closed_it() {
    if !privileged("a_socket_passed_to_another_process_belongs_to_the_one_that_closed_it") {
        return;
    }
    let ns = NetNs::new("scm");
    let obs = Observer::start(&ns, &[]);
    // The parent connects, hands the socket to its child over SCM_RIGHTS and closes its own
    // descriptor; the child (renamed) sends on it and closes it.
    let out = python(
        &ns,
        r#"
import ctypes, json, os, socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(15, b"scm-child", 0, 0, 0)
    _, fds, _, _ = socket.recv_fds(b, 16, 1)
    c = socket.socket(fileno=fds[0])
    assert b.recv(2) == b"go"  # the parent's descriptor is closed: this one is the last
    c.sendall(b"x" * 123)
    c.close()
    os._exit(0)
c = socket.create_connection(l.getsockname())
port = c.getsockname()[1]
socket.send_fds(a, [b"s"], [c.fileno()])
c.close()
a.sendall(b"go")
s, _ = l.accept()
got = 0
while True:
    d = s.recv(65536)
    if not d: break
    got += len(d)
s.close()
os.waitpid(pid, 0)
print(json.dumps({"parent": os.getpid(), "child": pid, "port": port, "got": got}))
"#,
    );
    let info = &out[0];
    assert_eq!(info["got"], 123);
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    let client = by_role(&records, "client")[0];
    assert_eq!(field(client, "source.port"), &info["port"]);
    assert_eq!(field(client, "process.pid"), &info["child"], "{client}");
    assert_eq!(field(client, "process.name"), "scm-child", "{client}");
    assert_eq!(field(client, "conn.owner_source"), "close", "{client}");
    assert_eq!(field(client, "source.bytes"), 123, "{client}");
}

#[test]
fn an_owner_that_exited_before_its_socket_closed_is_still_named() {
    if !privileged("an_owner_that_exited_before_its_socket_closed_is_still_named") {
        return;
    }
    let ns = NetNs::new("exited");
    let mut server = Peer::spawn(&ns, "exit-srv");
    let port = server.port("listen 4 127.0.0.1", "port");
    let obs = Observer::start(&ns, &[]);
    // A short-lived client that exits without closing: the kernel closes the socket as the
    // process dies.
    let out = python(
        &ns,
        &format!(
            r#"
import ctypes, json, os, socket
ctypes.CDLL(None).prctl(15, b"short-lived", 0, 0, 0)
c = socket.create_connection(("127.0.0.1", {port}))
c.sendall(b"y" * 9)
print(json.dumps({{"pid": os.getpid(), "port": c.getsockname()[1]}}), flush=True)
os._exit(0)
"#
        ),
    );
    server.ok("accept");
    assert_eq!(server.ok("wait_eof")["extra"], 9);
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    let client = by_role(&records, "client")[0];
    assert_eq!(field(client, "source.port"), &out[0]["port"]);
    assert_eq!(field(client, "process.pid"), &out[0]["pid"], "{client}");
    assert_eq!(field(client, "process.name"), "short-lived", "{client}");
    assert_eq!(
        field(client, "process.executable"),
        "/usr/bin/python3.11",
        "{client}"
    );
    let server_record = by_role(&records, "server")[0];
    assert_eq!(field(server_record, "process.pid"), server.pid);
}

/// `tests/peers/quick_client.c` compiled into `dir/bin/quick-client`, with a relative symbolic
/// link `dir/quick` to it.
fn quick_client(dir: &std::path::Path) -> PathBuf {
    fs::create_dir_all(dir.join("bin")).expect("client dir");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/quick_client.c");
    let exe = dir.join("bin/quick-client");
    let out = Command::new("gcc")
        .arg("-O2")
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .output()
        .expect("gcc (install gcc)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_file(dir.join("quick"));
    std::os::unix::fs::symlink("bin/quick-client", dir.join("quick")).expect("symlink");
    fs::canonicalize(exe).expect("client path")
}

#[test]
fn a_client_gone_before_userspace_looked_is_named_by_the_file_it_ran() {
    if !privileged("a_client_gone_before_userspace_looked_is_named_by_the_file_it_ran") {
        return;
    }
    let ns = NetNs::new("walked");
    let mut server = Peer::spawn(&ns, "walk-srv");
    let port = server.port("listen 4 127.0.0.1", "port");
    let dir = scratch("walked");
    let exe = quick_client(&dir);
    let obs = Observer::start(&ns, &[]);
    // The parent runs the client through a relative link and keeps it a zombie, which has no
    // readable /proc/PID/exe, until the records are written: only the exec event can name it.
    let script = format!(
        r#"
import os, sys
os.chdir({dir:?})
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(w, 1)
    os.execv("./quick", ["./quick", "{port}"])
os.close(w)
print(os.read(r, 200).decode().strip(), flush=True)
sys.stdin.read()
os.waitpid(pid, 0)
"#,
        dir = dir.display().to_string()
    );
    let mut parent = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut line = String::new();
    BufReader::new(parent.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("client line");
    let out: Value = serde_json::from_str(&line).expect("client json");
    server.ok("accept");
    assert_eq!(server.ok("wait_eof")["extra"], 9);
    server.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    drop(parent.stdin.take());
    assert!(parent.wait().expect("parent").success());
    obs.stop().assert_clean();
    let client = by_role(&records, "client")[0];
    assert_eq!(field(client, "source.port"), &out["port"], "{client}");
    assert_eq!(field(client, "process.pid"), &out["pid"], "{client}");
    assert_eq!(field(client, "process.name"), "quick", "{client}");
    assert_eq!(
        field(client, "process.executable"),
        exe.to_str().expect("utf-8"),
        "{client}"
    );
    assert_eq!(field(client, "source.bytes"), 9, "{client}");
    std::fs::remove_dir_all(&dir).expect("remove the client's directory");
}
