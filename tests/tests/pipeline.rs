//! The observer as a whole: namespace and port filters, the transition stream, record and
//! replay, signals, a closed pipe and a full disk.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    NetNs, Observer, Peer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    privileged, sh, states,
    traffic::one_connection,
    wait_for,
};
use serde_json::Value;

fn inode(ns: &NetNs) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(ns.path()).expect("netns file").ino()
}

#[test]
fn g_netns_filter_shows_nothing_from_another_namespace() {
    if !privileged("g_netns_filter_shows_nothing_from_another_namespace") {
        return;
    }
    let watched = NetNs::new("g-in");
    let other = NetNs::new("g-out");
    let obs = Observer::start(&watched, &[]);
    // The other namespace's connection closes first, so it would be written first.
    let other_port = one_connection(&other, 11);
    let port = one_connection(&watched, 22);
    let records = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop_with(libc::SIGTERM);
    stopped.assert_clean();
    assert!(
        stopped.stderr.contains("stopped (SIGTERM)"),
        "{}",
        stopped.stderr
    );
    let all = stopped.dataset("observer.connection");
    assert_eq!(all.len(), 2, "only the watched namespace: {all:#?}");
    assert_eq!(records, all);
    for r in &all {
        assert_eq!(field(r, "conn.netns"), inode(&watched));
        assert_eq!(field(r, "destination.port"), port);
        assert_ne!(field(r, "destination.port"), other_port);
        assert_eq!(field(r, "source.bytes"), 22);
    }
}

#[test]
fn port_filter_keeps_either_end() {
    if !privileged("port_filter_keeps_either_end") {
        return;
    }
    let ns = NetNs::new("port");
    let mut server = Peer::spawn(&ns, "srv");
    let port = server.port("listen 4 127.0.0.1", "port");
    let obs = Observer::start(&ns, &["--port", &port.to_string()]);
    // A connection to another port first: it must not show.
    let other = one_connection(&ns, 5);
    let mut client = Peer::spawn(&ns, "cli");
    client.ok(&format!("connect 4 127.0.0.1 {port}"));
    server.ok("accept");
    client.ok("linger0");
    client.ok("close");
    let records = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    stopped.assert_clean();
    let all = stopped.dataset("observer.connection");
    assert_eq!(all, records);
    assert_eq!(all.len(), 2, "{all:#?}");
    for r in &all {
        assert_eq!(field(r, "destination.port"), port);
        assert_ne!(field(r, "destination.port"), other);
        assert_eq!(states(r).last().map(String::as_str), Some("CLOSE"));
    }
}

/// The traffic of the record/replay test: an orderly close, a refused connect and a reset.
fn mixed_traffic(ns: &NetNs) {
    let _ = one_connection(ns, 3);
    let mut client = Peer::spawn(ns, "refused");
    let closed = client.port("freeport 4 127.0.0.1", "port");
    assert_eq!(
        client.cmd(&format!("connect 4 127.0.0.1 {closed}"))["error"],
        "ECONNREFUSED"
    );
    let mut server = Peer::spawn(ns, "srv");
    let port = server.port("listen 6 ::1", "port");
    client.ok(&format!("connect 6 ::1 {port}"));
    server.ok("accept");
    client.ok("linger0");
    client.ok("close");
}

fn without_agent(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| field(l, "event.dataset") != "observer.agent")
        .cloned()
        .collect()
}

#[test]
fn h_record_then_replay_gives_identical_records() {
    if !privileged("h_record_then_replay_gives_identical_records") {
        return;
    }
    let ns = NetNs::new("h");
    let recording = scratch("rec");
    let obs = Observer::start(
        &ns,
        &[
            "--transitions",
            "--record",
            recording.to_str().expect("utf-8"),
        ],
    );
    mixed_traffic(&ns);
    let _ = obs.wait_records("observer.connection", 5);
    let live = obs.stop();
    live.assert_clean();
    let conns = live.dataset("observer.connection");
    assert_eq!(conns.len(), 5, "{conns:#?}");
    // The transition stream: every state change of every connection, joined by uid.
    let changes = live.dataset("observer.state");
    for conn in &conns {
        let uid = field(conn, "conn.uid");
        let mine: Vec<String> = changes
            .iter()
            .filter(|c| field(c, "conn.uid") == uid)
            .map(|c| {
                field(c, "conn.new_state")
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        let mut want = states(conn);
        // The stream shows the kernel's raw CLOSE where the record reads a time-wait handover.
        if want.last().map(String::as_str) == Some("TIME_WAIT") {
            *want.last_mut().expect("non-empty") = "CLOSE".into();
        }
        assert_eq!(mine, want, "state records of {conn}");
    }

    let replayed = scratch("ndjson");
    let status = Command::new(bin())
        .args(["replay", "--transitions", "--output"])
        .arg(&replayed)
        .arg(&recording)
        .status()
        .expect("replay");
    assert!(status.success());
    let text = std::fs::read_to_string(&replayed).expect("replay output");
    let again = parse_lines(&text);
    // Every record, in order within its dataset. (Live, records are emitted when a drain finds
    // them due; in replay, when the stream's clock passes that point. So state records may
    // interleave differently with connection records; each stream is identical.)
    for dataset in ["observer.connection", "observer.state", "observer.loss"] {
        assert_eq!(
            live.dataset(dataset),
            of_dataset(&again, dataset),
            "replay reproduces {dataset}"
        );
    }
    assert_eq!(
        without_agent(&live.lines).len(),
        again.len(),
        "nothing more, nothing less"
    );

    // Filters apply to replay too: only the refused connect used this port.
    let refused = conns
        .iter()
        .find(|c| field(c, "conn.error") == "ECONNREFUSED")
        .expect("refused");
    let port = field(refused, "destination.port").to_string();
    let out = Command::new(bin())
        .args(["replay", "--port", &port])
        .arg(&recording)
        .output()
        .expect("replay");
    assert!(out.status.success());
    let filtered = of_dataset(
        &parse_lines(&String::from_utf8_lossy(&out.stdout)),
        "observer.connection",
    );
    assert_eq!(filtered, vec![refused.clone()]);
    let _ = std::fs::remove_file(&recording);
    let _ = std::fs::remove_file(&replayed);
}

#[test]
fn a_closed_stdout_ends_the_run_cleanly() {
    if !privileged("a_closed_stdout_ends_the_run_cleanly") {
        return;
    }
    let ns = NetNs::new("pipe");
    let mut child = Command::new(bin())
        .args(["run", "--netns"])
        .arg(ns.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(first.contains("\"started\""), "{first}");
    drop(stdout);
    let _ = one_connection(&ns, 1);
    let status = wait_for(
        Duration::from_secs(10),
        "observer to notice the closed pipe",
        || child.try_wait().ok().flatten(),
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped (output closed)"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_closed_stdout_ends_only_itself_while_another_output_goes_on() {
    if !privileged("a_closed_stdout_ends_only_itself_while_another_output_goes_on") {
        return;
    }
    let ns = NetNs::new("pipe2");
    let file = scratch("ndjson");
    let mut child = Command::new(bin())
        .args(["run", "--control-socket", "none", "--netns"])
        .arg(ns.path())
        .args(["--sink", "stdout", "--sink"])
        .arg(format!("file://{}", file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(first.contains("\"started\""), "{first}");
    drop(stdout);
    let port = one_connection(&ns, 1);
    let records = || {
        of_dataset(
            &parse_lines(&std::fs::read_to_string(&file).unwrap_or_default()),
            "observer.connection",
        )
        .len()
    };
    wait_for(Duration::from_secs(10), "both records in the file", || {
        (records() == 2).then_some(())
    });
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).expect("pid"),
            libc::SIGINT,
        )
    };
    let status = child.wait().expect("exit");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped (SIGINT)"), "{stderr}");
    let lines = parse_lines(&std::fs::read_to_string(&file).expect("the file"));
    let _ = std::fs::remove_file(&file);
    let conns = of_dataset(&lines, "observer.connection");
    assert_eq!(conns.len(), 2, "{lines:#?}");
    assert!(conns.iter().all(|c| field(c, "destination.port") == port));
    let stopped = lines.last().expect("lines");
    assert_eq!(field(stopped, "event.action"), "stopped", "{stopped}");
    assert_eq!(field(stopped, "event.reason"), "SIGINT", "{stopped}");
    // Both were handed every line before the stopped one; stdout dropped all it could not
    // take once its reader had gone, at least the two records, and counted them.
    let handed = lines.len() as u64 - 1;
    assert_eq!(
        field(stopped, "observer.sink.file.lines"),
        handed,
        "{stopped}"
    );
    assert_eq!(field(stopped, "observer.sink.file.dropped"), 0, "{stopped}");
    assert_eq!(
        field(stopped, "observer.sink.stdout.lines"),
        handed,
        "{stopped}"
    );
    let dropped = field(stopped, "observer.sink.stdout.dropped")
        .as_u64()
        .expect("a count");
    assert!(dropped >= 2 && dropped < handed, "{stopped}");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn new(bytes: u64) -> Self {
        let dir = scratch("disk");
        std::fs::create_dir(&dir).expect("mount point");
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "obs-test",
                dir.to_str().expect("utf-8"),
            ],
        );
        Self { dir }
    }

    /// Fills every free byte.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.dir.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", filler.display()))
            .stderr(Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_disk_loses_nothing() {
    if !privileged("a_full_disk_loses_nothing") {
        return;
    }
    let disk = SmallDisk::new(1 << 20);
    let ns = NetNs::new("disk");
    let output = disk.dir.join("out.ndjson");
    let netns = ns.path();
    let obs = Observer::start_with(&[
        "run",
        "--netns",
        netns.to_str().expect("utf-8"),
        "--output",
        output.to_str().expect("utf-8"),
    ]);
    let filler = disk.fill();
    for _ in 0..3 {
        let _ = one_connection(&ns, 9);
    }
    let stderr_says = |what: &str| {
        let stderr = std::fs::read_to_string(obs.stderr_path()).unwrap_or_default();
        stderr.contains(what).then_some(stderr)
    };
    let warning = wait_for(Duration::from_secs(10), "the disk-full warning", || {
        stderr_says("No space left on device")
    });
    assert!(
        warning.contains(&format!("cannot write to {}", output.display())),
        "{warning}"
    );
    std::fs::remove_file(filler).expect("free the disk");
    wait_for(Duration::from_secs(10), "the recovery notice", || {
        stderr_says("works again; its queue dropped nothing meanwhile")
    });
    let stopped = obs.stop();
    let lines = &stopped.lines;
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let conns = of_dataset(lines, "observer.connection");
    assert_eq!(
        conns.len(),
        6,
        "all three connections, both ends: {conns:#?}"
    );
    let summary = of_dataset(lines, "observer.loss");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["loss"]["total"]["ring_full"], 0);
}

#[test]
fn sigusr1_pauses_and_sigusr2_resumes_capture() {
    if !privileged("sigusr1_pauses_and_sigusr2_resumes_capture") {
        return;
    }
    let ns = NetNs::new("pause");
    let obs = Observer::start(&ns, &[]);
    let agent_actions = |obs: &Observer| -> Vec<String> {
        of_dataset(&obs.lines(), "observer.agent")
            .iter()
            .map(|l| field(l, "event.action").as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let signal = |sig| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(libc::pid_t::try_from(obs.pid()).expect("pid"), sig) };
    };
    signal(libc::SIGUSR1);
    wait_for(Duration::from_secs(10), "the paused line", || {
        (agent_actions(&obs) == ["started", "paused"]).then_some(())
    });
    let unseen = one_connection(&ns, 1);
    signal(libc::SIGUSR2);
    wait_for(Duration::from_secs(10), "the resumed line", || {
        (agent_actions(&obs) == ["started", "paused", "resumed"]).then_some(())
    });
    let seen = one_connection(&ns, 2);
    let records = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    stopped.assert_clean();
    let all = stopped.dataset("observer.connection");
    assert_eq!(all, records, "nothing from the paused window");
    for r in &all {
        assert_eq!(field(r, "destination.port"), seen);
        assert_ne!(field(r, "destination.port"), unseen);
        assert_eq!(field(r, "source.bytes"), 2);
    }
}

/// Every record that is not one half of a client/server pair: each connection of the test has
/// a client record and a server record with the same originator port (`source.port`), so an
/// end whose other end is missing, an end seen twice and a record of another role are named,
/// each with the whole record.
fn unpaired(records: &[Value]) -> Vec<String> {
    let mut by_port: std::collections::BTreeMap<String, Vec<&Value>> =
        std::collections::BTreeMap::new();
    for r in records {
        by_port
            .entry(field(r, "source.port").to_string())
            .or_default()
            .push(r);
    }
    let mut odd = Vec::new();
    for (port, rs) in &by_port {
        let roles: Vec<String> = rs
            .iter()
            .map(|r| field(r, "conn.role").to_string())
            .collect();
        let mut sorted = roles.clone();
        sorted.sort();
        if sorted != ["\"client\"", "\"server\""] {
            odd.push(format!(
                "source.port {port}: roles {roles:?}, want one client and one server:\n{}",
                rs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    odd
}

/// `records`, and [`unpaired`]'s findings, for a failed assertion.
fn odd_ones(records: &[Value]) -> String {
    let odd = unpaired(records);
    format!(
        "{} records; {} originator ports without exactly one client and one server record:\n{}",
        records.len(),
        odd.len(),
        odd.join("\n")
    )
}

#[test]
fn more_live_sockets_than_hot_slots_lose_nothing() {
    // 1500 connections open at once: 3000 live sockets, far beyond the 512 cache-hot slots,
    // so most of them live in the fallback hash map.
    const N: u64 = 1500;
    if !privileged("more_live_sockets_than_hot_slots_lose_nothing") {
        return;
    }
    let ns = NetNs::new("many");
    // A ring that holds every close event at once: this test is about the kernel maps, and under
    // QEMU's emulation userspace drains the default 1 MiB ring slower than 3000 sockets close.
    let obs = Observer::start(&ns, &["--ring-mib", "8"]);
    let script = format!(
        "import socket\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen({N})\n\
         cs = [socket.create_connection(l.getsockname()) for _ in range({N})]\n\
         ss = [l.accept()[0] for _ in range({N})]\n\
         for c in cs: c.sendall(b'x')\n\
         for s in ss: assert s.recv(1) == b'x'\n\
         for c in cs: c.close()\n\
         for s in ss: s.close()\n"
    );
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", &script])
        .status()
        .expect("python");
    assert!(status.success());
    let expected = usize::try_from(2 * N).expect("fits");
    let records = obs.wait_records("observer.connection", expected);
    let stopped = obs.stop();
    let all = stopped.dataset("observer.connection");
    assert_eq!(records.len(), expected, "{}", odd_ones(&all));
    assert_eq!(all.len(), expected, "{}", odd_ones(&all));
    assert!(unpaired(&all).is_empty(), "{}", odd_ones(&all));
    for r in &records {
        assert_eq!(field(r, "source.bytes"), 1, "{r}");
        let role = field(r, "conn.role");
        let want: &[&str] = if role == "client" {
            &[
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
            ]
        } else {
            &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
        };
        assert_eq!(states(r), want, "{r}");
    }
    // Shown with --nocapture: how many transitions the second program took over.
    println!("{}", stopped.stderr.trim_end());
    // Last: a loss record is told apart from records actually missing.
    stopped.assert_clean();
}
