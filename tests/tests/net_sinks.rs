//! Network outputs (`tcp://`, `unix://`) against real consumers: syslog-ng restarted in the
//! middle of the traffic gets every line once, intact, except exactly the ones counted as
//! dropped; a consumer that stops reading costs only its own lines, counted exactly; a
//! consumer that is down at start is warned about once and gets everything once it is up.
//!
//! The agent runs inside the consumer's namespace (its sockets are made there) and captures
//! another one, so that its own connection to the consumer is never among its records.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use observer_tests::{
    NetNs, Observer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    privileged, sh,
    traffic::churn,
    wait_for,
};
use serde_json::Value;

/// The consumer's port, inside its own namespace.
const PORT: u16 = 5140;

/// Runs `f` (which starts processes) with this thread inside `ns`'s network namespace, so
/// that what it spawns makes its sockets there.
fn in_netns<T>(ns: &NetNs, f: impl FnOnce() -> T) -> T {
    let home = File::open("/proc/thread-self/ns/net").expect("this thread's netns");
    let target = File::open(ns.path()).expect("the namespace");
    // SAFETY: setns moves only the calling thread; both are open namespace files.
    assert_eq!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns: {}",
        std::io::Error::last_os_error()
    );
    let out = f();
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns back: {}",
        std::io::Error::last_os_error()
    );
    out
}

fn count(line: &Value, path: &str) -> u64 {
    field(line, path).as_u64().unwrap_or(0)
}

/// Whether a TCP socket in `ns` with local port [`PORT`] is in `state` (an `ss` state name);
/// its receive queues (bytes the kernel took that the program has not read).
fn recv_queues(ns: &NetNs, state: &str) -> Vec<u64> {
    let filter = format!("( sport = :{PORT} )");
    sh(
        "ip",
        &[
            "netns", "exec", &ns.name, "ss", "-Htn", "state", state, &filter,
        ],
    )
    .lines()
    .map(|l| {
        l.split_whitespace()
            .next()
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("ss line {l:?}"))
    })
    .collect()
}

/// syslog-ng with its own configuration, persist file and control socket, listening on
/// [`PORT`] in `ns` and writing each JSON line it gets to `output` as JSON again.
struct SyslogNg {
    dir: PathBuf,
    child: Option<Child>,
}

impl SyslogNg {
    fn output(dir: &Path) -> PathBuf {
        dir.join("received.ndjson")
    }

    fn start(ns: &NetNs, dir: &Path) -> Self {
        // flow-control: it reads from the socket only what its destination has room for,
        // and writes out what it read when stopped (without it, SIGTERM drops its queue).
        let config = format!(
            "@version: 3.38\n\
             options {{ stats-freq(0); }};\n\
             source s {{ network(transport(\"tcp\") ip(\"127.0.0.1\") port({PORT}) flags(no-parse)); }};\n\
             parser p {{ json-parser(prefix(\".json.\")); }};\n\
             destination d {{ file(\"{}\" template(\"$(format-json --scope dot-nv-pairs --rekey .json.* --shift-levels 2)\\n\")); }};\n\
             log {{ source(s); parser(p); destination(d); flags(flow-control); }};\n",
            Self::output(dir).display()
        );
        let conf = dir.join("syslog-ng.conf");
        std::fs::write(&conf, config).expect("syslog-ng.conf");
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("syslog-ng.log"))
            .expect("log");
        let path = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "syslog-ng",
                "-F",
                "--no-caps",
                "-f",
            ])
            .args([path("syslog-ng.conf"), "-R".into(), path("persist")])
            .args(["-p".into(), path("pid"), "-c".into(), path("ctl")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("syslog-ng");
        let mut sng = Self {
            dir: dir.to_owned(),
            child: Some(child),
        };
        wait_for(Duration::from_secs(20), "syslog-ng to listen", || {
            if let Some(status) = sng.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("syslog-ng exited with {status}: {}", sng.log());
            }
            (!recv_queues(ns, "listening").is_empty()).then_some(())
        });
        sng
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("syslog-ng.log")).unwrap_or_default()
    }

    /// What it wrote: each line's fields, all of them strings.
    fn received(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(Self::output(&self.dir)).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// SIGTERM, its orderly stop, and waits for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child (`ip netns exec` became syslog-ng).
        unsafe {
            libc::kill(
                libc::pid_t::try_from(child.id()).expect("pid"),
                libc::SIGTERM,
            )
        };
        let status = wait_for(Duration::from_secs(20), "syslog-ng to exit", || {
            child.try_wait().ok().flatten()
        });
        assert!(status.success(), "syslog-ng: {status}: {}", self.log());
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A record's identity across the two outputs: its uid, or for the observer's own lines
/// their dataset, action and time.
fn key(line: &Value, text: impl Fn(&Value) -> String) -> String {
    let uid = field(line, "conn.uid");
    if uid.is_null() {
        format!(
            "{} {} {}",
            text(field(line, "event.dataset")),
            text(field(line, "event.action")),
            text(&line["@timestamp"])
        )
    } else {
        text(uid)
    }
}

fn as_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Every string, integer and boolean of `written` outside arrays, by dotted path, as
/// syslog-ng prints them (it keeps no types, and prints floats its own way).
fn scalars(prefix: &str, written: &Value, out: &mut BTreeMap<String, String>) {
    match written {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                scalars(&path, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Bool(b) => {
            out.insert(prefix.to_owned(), b.to_string());
        }
        Value::Number(n) if !n.is_f64() => {
            out.insert(prefix.to_owned(), n.to_string());
        }
        _ => {}
    }
}

#[test]
fn syslog_ng_restarted_mid_traffic_gets_every_line_once_but_the_dropped() {
    if !privileged("syslog_ng_restarted_mid_traffic_gets_every_line_once_but_the_dropped") {
        return;
    }
    let consumer = NetNs::new("sng");
    let traffic = NetNs::new("sngt");
    let dir = scratch("syslog-ng");
    std::fs::create_dir(&dir).expect("dir");
    let mut sng = SyslogNg::start(&consumer, &dir);
    let url = format!("tcp://127.0.0.1:{PORT}");
    // The default 64 MiB queue: the file output beside it, the ground truth, must lose
    // nothing (the tests below make a queue overflow).
    let obs = in_netns(&consumer, || {
        Observer::start(&traffic, &["--sink", &url, "--ring-mib", "16"])
    });
    churn(&traffic, 1000);
    let _ = obs.wait_records("observer.connection", 2000);

    // The restart. Lines syslog-ng's kernel acknowledged but syslog-ng never read are lost
    // when it stops, and no sender can tell which (see observer/src/sink/net.rs); so the
    // path to it is cut first, and it is stopped once it has read all it got. What the
    // agent writes meanwhile stays unacknowledged in its socket, to be resent.
    consumer.nft(&format!(
        "add table inet cut\n\
         add chain inet cut input {{ type filter hook input priority 0; }}\n\
         add rule inet cut input tcp dport {PORT} drop\n"
    ));
    churn(&traffic, 500);
    let _ = obs.wait_records("observer.connection", 3000);
    wait_for(
        Duration::from_secs(20),
        "syslog-ng to read all it got",
        || (recv_queues(&consumer, "established") == [0]).then_some(()),
    );
    sng.stop();
    sng = SyslogNg::start(&consumer, &dir);
    consumer.nft("delete table inet cut");
    churn(&traffic, 500);
    let _ = obs.wait_records("observer.connection", 4000);
    let stopped = obs.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let last = stopped.lines.last().expect("lines").clone();
    assert_eq!(field(&last, "event.action"), "stopped", "{last}");
    wait_for(
        Duration::from_secs(30),
        "the stopped line at syslog-ng",
        || {
            sng.received()
                .last()
                .is_some_and(|l| l["event"]["action"] == "stopped")
                .then_some(())
        },
    );
    sng.stop();
    let received = sng.received();
    let log = sng.log();
    let _ = std::fs::remove_dir_all(&dir);

    // The file output is the ground truth: it lost nothing, and both were handed every line.
    assert_eq!(count(&last, "observer.records"), 4000, "{last}");
    assert_eq!(count(&last, "observer.sink.file.dropped"), 0, "{last}");
    let handed = count(&last, "observer.sink.tcp.lines");
    let dropped = count(&last, "observer.sink.tcp.dropped");
    assert_eq!(count(&last, "observer.sink.file.lines"), handed, "{last}");
    assert_eq!(stopped.lines.len() as u64, handed + 1, "{last}");

    assert_each_once_intact(&stopped.lines, &received);
    assert_eq!(
        received.len() as u64 + dropped,
        handed + 1,
        "delivered + dropped = written (with the stopped line); syslog-ng: {log}"
    );
    let losses = of_dataset(&stopped.lines, "observer.loss");
    let reported: u64 = losses
        .iter()
        .map(|l| count(l, "loss.sink.tcp.dropped"))
        .sum();
    assert_eq!(reported, dropped, "the deltas add up: {losses:#?}");

    assert_one_break_one_return(&stopped.stderr, &url, dropped);
}

/// Every line syslog-ng got is one the agent wrote, once, its fields intact.
fn assert_each_once_intact(lines: &[Value], received: &[Value]) {
    let mut written: HashMap<String, &Value> = HashMap::new();
    for line in lines {
        assert!(written.insert(key(line, as_text), line).is_none(), "{line}");
    }
    let mut seen = HashSet::new();
    for got in received {
        let k = key(got, as_text);
        let line = written
            .get(&k)
            .unwrap_or_else(|| panic!("syslog-ng got a line never written: {got}"));
        assert!(seen.insert(k), "delivered twice: {got}");
        let mut fields = BTreeMap::new();
        scalars("", line, &mut fields);
        for (path, want) in &fields {
            assert_eq!(&as_text(field(got, path)), want, "{path} of {got}");
        }
    }
}

/// One warning when the connection broke, naming how many lines are resent, and one line
/// when it was back.
fn assert_one_break_one_return(stderr: &str, url: &str, dropped: u64) {
    let prefix = format!(
        "observer: warning: cannot write to {url}: the connection to 127.0.0.1:{PORT} broke (Broken pipe (os error 32)); the "
    );
    assert_eq!(stderr.matches("cannot write to").count(), 1, "{stderr}");
    let resent: u64 = stderr
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no break warning: {stderr}"));
    assert!(resent > 1, "the cut left lines to resend: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{prefix}{resent} lines it had not acknowledged are resent on reconnecting (after 200 ms, doubling to 5 s); any its kernel acknowledged but its reader had not read are lost with it, uncounted; retrying every 200 ms"
        )),
        "{stderr}"
    );
    let back = format!("observer: writing to {url} works again; ");
    assert_eq!(stderr.matches(&back).count(), 1, "{stderr}");
    let meanwhile = if dropped == 0 {
        "its queue dropped nothing meanwhile".to_owned()
    } else {
        format!("{dropped} lines were dropped meanwhile (counted in observer.loss)")
    };
    assert!(stderr.contains(&format!("{back}{meanwhile}\n")), "{stderr}");
}

/// `tests/peers/stream_receiver.py` in `ns`: one connection, appended to `out`.
struct Receiver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    out: PathBuf,
}

impl Receiver {
    fn start(ns: &NetNs, at: &str, hold: bool) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/stream_receiver.py");
        let out = scratch("received");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-u"])
            .arg(script)
            .arg(at)
            .arg(&out);
        if hold {
            command.arg("--hold");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut receiver = Self {
            child,
            stdin,
            stdout,
            out,
        };
        receiver.expect("listening");
        receiver
    }

    fn expect(&mut self, word: &str) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("receiver says");
        assert!(line.starts_with(word), "receiver said {line:?}, not {word}");
        line
    }

    /// Lets a held receiver read.
    fn read(&mut self) {
        writeln!(self.stdin).expect("go");
    }

    /// Waits for the end of the stream; what it got.
    fn finish(mut self) -> String {
        let mut line = String::new();
        while !line.starts_with("eof") {
            line.clear();
            self.stdout.read_line(&mut line).expect("receiver says");
            assert!(!line.is_empty(), "the receiver ended early");
        }
        assert!(self.child.wait().expect("exit").success());
        let text = std::fs::read_to_string(&self.out).expect("received");
        let _ = std::fs::remove_file(&self.out);
        text
    }
}

/// A consumer that accepts and reads nothing while 3000 connections are made: capture loses
/// nothing, and the output loses exactly what it says, the rest arriving once it reads. Its
/// stream is the only output (another would share the small queue and could drop too).
fn a_consumer_that_never_reads(test: &str, sink: &str, name: &str, at: &str) {
    const CONNECTIONS: u32 = 3000;
    if !privileged(test) {
        return;
    }
    let consumer = NetNs::new("lazy");
    let traffic = NetNs::new("lazyt");
    let mut receiver = Receiver::start(&consumer, at, true);
    let stderr_path = scratch("stderr");
    // A 1 MiB queue holds some 650 of the 6000 records; a ring that holds them all, so that
    // the kernel side has no excuse to lose any.
    let mut child = in_netns(&consumer, || {
        Command::new(bin())
            .args(["run", "--netns"])
            .arg(traffic.path())
            .args(["--sink", sink, "--queue-mib", "1", "--ring-mib", "16"])
            .args(["--control-socket", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn observer")
    });
    receiver.expect("accepted");
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    wait_for(Duration::from_secs(30), "capture to start", || {
        stderr().contains("observer: capturing on").then_some(())
    });
    // The reader stops: its window fills, then the socket's buffer, then the queue.
    churn(&traffic, CONNECTIONS);
    let full = format!("{name} cannot keep up");
    wait_for(Duration::from_secs(30), "the queue-full warning", || {
        stderr().contains(&full).then_some(())
    });

    // It reads again, and the run stops.
    receiver.read();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).expect("pid"),
            libc::SIGINT,
        )
    };
    let status = child.wait().expect("exit");
    let lines = parse_lines(&receiver.finish());
    let stderr = stderr();
    let _ = std::fs::remove_file(&stderr_path);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr.matches("cannot keep up").count(), 1, "{stderr}");
    assert!(!stderr.contains("cannot write"), "it never broke: {stderr}");

    let first = lines.first().expect("lines");
    assert_eq!(field(first, "event.action"), "started", "{first}");
    let stopped = lines.last().expect("lines");
    assert_eq!(field(stopped, "event.action"), "stopped", "{stopped}");
    // Capture lost nothing: every socket's record was made, and the kernel dropped no event.
    let ends = u64::from(CONNECTIONS) * 2;
    assert_eq!(count(stopped, "observer.records"), ends, "{stopped}");
    let losses = of_dataset(&lines, "observer.loss");
    let summary = losses.last().expect("a loss summary");
    assert_eq!(field(summary, "event.action"), "summary", "{summary}");
    for key in [
        "ring_full",
        "map_full",
        "read_failed",
        "decode_errors",
        "table_full",
    ] {
        assert_eq!(summary["loss"]["total"][key], 0, "{key}: {summary}");
    }
    // The output lost exactly what it says, and the stream says it.
    let handed = count(stopped, &format!("observer.sink.{name}.lines"));
    let lost = count(stopped, &format!("observer.sink.{name}.dropped"));
    assert!(
        lost > 0,
        "the stalled reader made the queue drop: {stopped}"
    );
    assert_eq!(lines.len() as u64 - 1, handed - lost, "{stopped}");
    let records = of_dataset(&lines, "observer.connection").len() as u64;
    assert_eq!(records + lost, ends, "only records were dropped: {stopped}");
    assert_eq!(
        count(summary, &format!("loss.total.sink.{name}.dropped")),
        lost,
        "{summary}"
    );
    let reported: u64 = losses
        .iter()
        .map(|l| count(l, &format!("loss.sink.{name}.dropped")))
        .sum();
    assert_eq!(reported, lost, "the deltas add up: {losses:#?}");
}

#[test]
fn a_tcp_consumer_that_never_reads_costs_only_its_own_lines_counted_exactly() {
    let at = format!("127.0.0.1:{PORT}");
    a_consumer_that_never_reads(
        "a_tcp_consumer_that_never_reads_costs_only_its_own_lines_counted_exactly",
        &format!("tcp://{at}"),
        "tcp",
        &format!("tcp:{at}"),
    );
}

#[test]
fn a_unix_socket_consumer_that_never_reads_costs_only_its_own_lines_counted_exactly() {
    let path = scratch("sock");
    a_consumer_that_never_reads(
        "a_unix_socket_consumer_that_never_reads_costs_only_its_own_lines_counted_exactly",
        &format!("unix://{}", path.display()),
        "unix",
        &format!("unix:{}", path.display()),
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_consumer_down_at_start_is_warned_about_once_and_gets_everything_once_up() {
    if !privileged("a_consumer_down_at_start_is_warned_about_once_and_gets_everything_once_up") {
        return;
    }
    let consumer = NetNs::new("down");
    let traffic = NetNs::new("downt");
    let url = format!("tcp://127.0.0.1:{PORT}");
    let obs = in_netns(&consumer, || Observer::start(&traffic, &["--sink", &url]));
    let warning = format!(
        "observer: warning: cannot write to {url}: cannot connect to 127.0.0.1:{PORT}: Connection refused (os error 111); start its receiver or correct the address (reconnecting after 200 ms, doubling to 5 s); retrying every 200 ms and holding records in its queue, whose overflow is counted in observer.loss — free space or fix the output\n"
    );
    let stderr = || std::fs::read_to_string(obs.stderr_path()).unwrap_or_default();
    wait_for(Duration::from_secs(10), "the warning", || {
        stderr().contains(&warning).then_some(())
    });
    churn(&traffic, 10);
    let _ = obs.wait_records("observer.connection", 20);
    let receiver = Receiver::start(&consumer, &format!("tcp:127.0.0.1:{PORT}"), false);
    let back =
        format!("observer: writing to {url} works again; its queue dropped nothing meanwhile\n");
    wait_for(Duration::from_secs(20), "the reconnect", || {
        stderr().contains(&back).then_some(())
    });
    churn(&traffic, 10);
    let _ = obs.wait_records("observer.connection", 40);
    let stopped = obs.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let got = parse_lines(&receiver.finish());
    // Once each: the warning, the line when it was back; and nothing else went wrong.
    assert_eq!(
        stopped.stderr.matches("warning").count(),
        1,
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped.stderr.matches(&back).count(),
        1,
        "{}",
        stopped.stderr
    );
    let last = stopped.lines.last().expect("lines");
    assert_eq!(count(last, "observer.records"), 40, "{last}");
    assert_eq!(count(last, "observer.sink.tcp.dropped"), 0, "{last}");
    assert_eq!(
        count(last, "observer.sink.tcp.lines"),
        stopped.lines.len() as u64 - 1,
        "{last}"
    );
    // The consumer got what the file did, line for line: the `started` line held from the
    // start, the records made while it was down, and all after.
    assert_eq!(got, stopped.lines);
}
