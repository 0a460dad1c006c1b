//! `observer top` in a real terminal: tmux runs it inside a shell, the test makes traffic in
//! its own namespace, reads the screen with `capture-pane`, quits with `q`, and checks that the
//! shell got its normal screen back.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{
    NetNs, Peer,
    observer::bin,
    privileged,
    tls::{Pki, python_server},
    wait_for,
};

/// A private tmux server (its own socket), killed on drop. Its test holds the lock: one
/// observer at a time, as each sees (and must drain) every event of the host.
struct Tmux {
    socket: String,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmux {
    fn start(width: u16, height: u16) -> Self {
        // One server per test: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = Self {
            _one_at_a_time: ONE_AT_A_TIME
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            socket: format!("obs-top-{}-{n}", std::process::id()),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='PROMPT$ ' sh",
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn format(&self, what: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", what])
            .trim()
            .to_owned()
    }

    fn alternate_on(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim()
            == "1"
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The screen once it shows `marker` and two captures 100 ms apart agree: a capture can
    /// land while a frame is being written.
    fn settled(&self, what: &str, marker: &str) -> String {
        wait_for(Duration::from_secs(20), what, || {
            let first = self.screen();
            if !first.contains(marker) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
            let second = self.screen();
            (second == first).then_some(second)
        })
    }

    /// Waits until a screen line satisfies `f`; returns that line.
    fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        // Four tests start an observer (probe load, TLS uprobes) at once on two shared CPUs.
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            let screen = self.screen();
            if let Some(line) = screen.lines().find(|l| f(l)) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let path = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "display-message",
                "-p",
                "#{socket_path}",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        // The server leaves its socket file behind.
        if let Ok(path) = path.as_deref()
            && !path.is_empty()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn has_all(line: &str, parts: &[&str]) -> bool {
    let cols: Vec<&str> = line.split_whitespace().collect();
    parts.iter().all(|p| cols.contains(p))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one terminal session, step by step")]
fn top_shows_a_live_connection_with_its_owner_and_state_then_restores_the_terminal() {
    if !privileged(
        "top_shows_a_live_connection_with_its_owner_and_state_then_restores_the_terminal",
    ) {
        return;
    }
    let ns = NetNs::new("top");
    let tmux = Tmux::start(160, 40);
    let command = format!(
        "{} top --refresh-ms 200 --close-wait-after 1 --netns {}; echo TOP-EXITED=$?",
        bin().display(),
        ns.path().display()
    );
    tmux.wait_line("the shell's prompt", |l| l.starts_with("PROMPT$"));
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_line("the header", |l| l.starts_with("observer top"));
    assert!(tmux.alternate_on(), "top draws on the alternate screen");

    // Real traffic after the start: a connection the capture sees being made.
    let mut server = Peer::spawn(&ns, "top-srv");
    let mut client = Peer::spawn(&ns, "top-cli");
    let port = server.port("listen 4 127.0.0.1", "port");
    let cport = client.port(&format!("connect 4 127.0.0.1 {port}"), "local_port");
    server.ok("accept");
    client.ok("send 3000");
    assert_eq!(server.ok("recv 3000")["got"], 3000);

    let local = format!("127.0.0.1:{cport}");
    let remote = format!("127.0.0.1:{port}");
    let cpid = client.pid.to_string();
    // Its bytes: 3000 sent (shown as 2.9K), none received. Waited for with the rest: a screen
    // drawn between the connect and the send shows it with 0 bytes (seen in the 6.1 guest).
    tmux.wait_line("the client's connection with its bytes", |l| {
        has_all(
            l,
            &[
                &cpid,
                "top-cli",
                &local,
                &remote,
                "ESTABLISHED",
                "2.9K",
                "0",
            ],
        )
    });
    let spid = server.pid.to_string();
    tmux.wait_line("the listener", |l| {
        has_all(l, &[&spid, "top-srv", &remote, "LISTEN"])
    });
    let header = tmux.screen();
    assert!(header.contains("lost 0"), "{header}");

    // The client closes and the server does not: the server's end is stuck in CLOSE_WAIT.
    client.ok("close");
    assert_eq!(server.ok("wait_eof")["extra"], 0);
    tmux.wait_line("the server's end in CLOSE_WAIT", |l| {
        has_all(l, &[&spid, "top-srv", &remote, &local, "CLOSE_WAIT"])
    });
    // For the README's capture of a live screen (`--nocapture`).
    println!("{}", tmux.screen());

    // A second later the detectors call it stuck: the Anomalies view shows the alert, with
    // its owner and evidence, and the header counts it.
    tmux.keys(&["3"]);
    let alert = tmux.wait_line("the close_wait_stuck alert", |l| {
        has_all(
            l,
            &[
                "FIRING",
                "close_wait_stuck",
                "medium",
                &spid,
                "top-srv",
                "1/1",
            ],
        )
    });
    assert!(
        alert.contains("top-srv (pid"),
        "the reason names the process: {alert}"
    );
    // The pane under the table: the alert's subject and its evidence (the frame may be
    // captured while it is being drawn: wait for it whole).
    let pane_head = format!("close_wait_stuck FIRING — top-srv (pid {spid})");
    let evidence = [format!("listen_ports: {port}"), format!("peers: {local}")];
    let screen = tmux.settled("the alert's pane", &pane_head);
    assert!(
        evidence.iter().all(|e| screen.contains(e.as_str())),
        "the evidence names the service and the peer: {screen}"
    );
    assert!(screen.contains("firing 1"), "{screen}");
    println!("{screen}");
    tmux.keys(&["1"]);

    // The filter narrows the table to one socket.
    tmux.keys(&["/", "state:close-wait", "Enter"]);
    let mut last = String::new();
    let rows = wait_for(Duration::from_secs(10), "the filter applied", || {
        last = tmux.screen();
        let rows: Vec<&str> = last.lines().filter(|l| l.contains("127.0.0.1:")).collect();
        (last.contains("filter: state:close-wait") && rows.len() == 1).then(|| rows.join("\n"))
    });
    assert!(
        rows.contains("CLOSE_WAIT") && rows.contains(&spid),
        "{last}"
    );

    // Enter opens the server end's detail pane: its lifecycle, each transition with its
    // time, from its birth off the listener to CLOSE_WAIT.
    tmux.keys(&["Enter"]);
    let pane = tmux.settled("the detail pane", "lifecycle (UTC)");
    // The timeline is the pane's left column: a clock time, the offset since birth, the state.
    let timeline: Vec<String> = pane
        .lines()
        .filter_map(|l| {
            let left: String = l.chars().skip(1).take(46).collect();
            let words: Vec<&str> = left.split_whitespace().collect();
            let clock = words.first()?;
            (clock.len() == 12 && clock.as_bytes()[2] == b':').then(|| {
                words[1..]
                    .iter()
                    .filter(|w| !w.starts_with('+'))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .collect();
    assert_eq!(
        timeline,
        [
            "born from LISTEN",
            "SYN_RECV",
            "ESTABLISHED",
            "CLOSE_WAIT (now)"
        ],
        "born off its listener, then each transition with its time: {pane}"
    );
    assert!(
        pane.contains(&format!("owner {spid} top-srv"))
            && pane.contains("rx 2.9K  tx 0")
            && pane.contains("none seen (`--tls` watches handshakes)"),
        "{pane}"
    );
    println!("{pane}");
    tmux.keys(&["Escape"]);

    tmux.keys(&["q"]);
    let line = tmux.wait_line("the shell after top", |l| l.starts_with("TOP-EXITED="));
    assert_eq!(line.trim(), "TOP-EXITED=0", "top exits with success");
    assert!(!tmux.alternate_on(), "the alternate screen is left");
    let after = tmux.screen();
    // Left as the shell had it: the frame (header, column titles) went with the alternate
    // screen.
    assert!(
        !after.contains("observer top —") && !after.contains("IN-STATE"),
        "{after}"
    );
    // The shell is back in cooked mode: a typed command runs and echoes normally.
    tmux.keys(&["echo cooked-$((6*7))", "Enter"]);
    tmux.wait_line("the shell echoing", |l| l.trim() == "cooked-42");
}

/// A TLS client (Python `ssl`, OpenSSL) that completes its handshake and then holds the
/// connection open until dropped.
struct HeldTlsClient {
    child: Child,
    pid: u32,
    local_port: u16,
}

impl HeldTlsClient {
    fn connect(ns: &NetNs, port: u16, ca: &str, sni: &str) -> Self {
        let script = format!(
            "import socket, ssl, sys, os\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname={sni:?})\n\
             print(os.getpid(), s.getsockname()[1], s.version(), flush=True)\n\
             sys.stdin.readline()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the TLS client");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the client's report");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.get(2), Some(&"TLSv1.3"), "handshake done: {line:?}");
        Self {
            pid: parts[0].parse().expect("pid"),
            local_port: parts[1].parse().expect("port"),
            child,
        }
    }
}

impl Drop for HeldTlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn top_with_tls_shows_the_version_and_server_name_of_an_open_connection() {
    if !privileged("top_with_tls_shows_the_version_and_server_name_of_an_open_connection") {
        return;
    }
    let ns = NetNs::new("toptls");
    let pki = Pki::new();
    let tmux = Tmux::start(170, 30);
    tmux.wait_line("the shell's prompt", |l| l.starts_with("PROMPT$"));
    let command = format!(
        "{} top --tls --refresh-ms 200 --netns {}; echo TOP-EXITED=$?",
        bin().display(),
        ns.path().display()
    );
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_line("the header", |l| l.starts_with("observer top"));
    let server = python_server(&ns, &pki, &[]);
    let client = HeldTlsClient::connect(&ns, server.port, &pki.path("ca.pem"), "tls.test");
    let local = format!("127.0.0.1:{}", client.local_port);
    let remote = format!("127.0.0.1:{}", server.port);
    let cpid = client.pid.to_string();
    let line = tmux.wait_line("the client's TLS connection", |l| {
        has_all(
            l,
            &[
                &cpid,
                "python3",
                &local,
                &remote,
                "ESTABLISHED",
                "1.3",
                "tls.test",
            ],
        )
    });
    println!("{}", tmux.screen());
    // The server's end saw the same hello.
    let spid = server.pid.to_string();
    tmux.wait_line("the server's TLS connection", |l| {
        has_all(
            l,
            &[&spid, &remote, &local, "ESTABLISHED", "1.3", "tls.test"],
        )
    });
    // Filtering by the server name keeps both ends and drops the listener.
    tmux.keys(&["/", "tls.test", "Enter"]);
    wait_for(Duration::from_secs(10), "the SNI filter", || {
        let screen = tmux.screen();
        let rows = screen.lines().filter(|l| l.contains("127.0.0.1:")).count();
        (screen.contains("filter: tls.test") && rows == 2).then_some(())
    });
    assert!(line.contains("tls.test"));
    // The client's detail pane: its handshake beside its timeline.
    tmux.keys(&["Escape"]);
    tmux.wait_line("the filter cleared", |l| l.contains("filter: -"));
    tmux.keys(&["/", &format!("pid:{cpid}"), "Enter", "Enter"]);
    let pane = tmux.settled("the client's detail pane", "TLS handshake");
    for want in [
        "born from CLOSE",
        "SYN_SENT",
        "ESTABLISHED (now)",
        "TLS 1.3, established, as client",
        "server name  tls.test",
        "cipher       TLS_AES_256_GCM_SHA384",
        &format!("owner {cpid} python3"),
    ] {
        assert!(pane.contains(want), "{want:?} in\n{pane}");
    }
    println!("{pane}");
    tmux.keys(&["q"]);
    let exited = tmux.wait_line("the shell after top", |l| l.starts_with("TOP-EXITED="));
    assert_eq!(exited.trim(), "TOP-EXITED=0");
    drop(client);
}

#[test]
fn a_panic_in_top_gives_the_terminal_back_then_prints_its_message() {
    if !privileged("a_panic_in_top_gives_the_terminal_back_then_prints_its_message") {
        return;
    }
    // Rust's exit status for a panic that unwound out of main.
    failing_top_gives_the_terminal_back("panic", 101);
}

#[test]
fn an_error_in_top_gives_the_terminal_back_then_prints_it() {
    if !privileged("an_error_in_top_gives_the_terminal_back_then_prints_it") {
        return;
    }
    failing_top_gives_the_terminal_back("error", 1);
}

/// `observer top` made to fail (`OBSERVER_TOP_TEST_FAIL=<how>`) after its first refresh: it
/// exits with `status`, the shell gets its normal screen, cursor and cooked mode back, and the
/// message is printed on it: the panic's (after its `panicked at` line), or the error's.
fn failing_top_gives_the_terminal_back(how: &str, status: i32) {
    let ns = NetNs::new(&format!("top{how}"));
    let tmux = Tmux::start(120, 30);
    tmux.wait_line("the shell's prompt", |l| l.starts_with("PROMPT$"));
    let command = format!(
        "RUST_BACKTRACE=0 OBSERVER_TOP_TEST_FAIL={how} {} top --refresh-ms 300 --netns {}; echo TOP-EXITED=$?",
        bin().display(),
        ns.path().display()
    );
    tmux.keys(&[&command, "Enter"]);
    let exited = tmux.wait_line("the shell after the failure", |l| {
        l.starts_with("TOP-EXITED=")
    });
    assert_eq!(exited.trim(), format!("TOP-EXITED={status}"));
    assert!(!tmux.alternate_on(), "the alternate screen is left");
    assert_eq!(
        tmux.format("#{cursor_flag}"),
        "1",
        "the cursor is shown again"
    );
    let screen = tmux.screen();
    // The message is on the normal screen, after the command line and before the status: it
    // was printed once the terminal was back (and stderr no longer pointed at /dev/null).
    let lines: Vec<&str> = screen.lines().collect();
    let at = |f: &dyn Fn(&str) -> bool| lines.iter().position(|l| f(l));
    let command_line = at(&|l| l.starts_with("PROMPT$ RUST_BACKTRACE=0 OBSERVER_TOP_TEST_FAIL="))
        .expect("command");
    let wanted = format!("OBSERVER_TOP_TEST_FAIL={how}: a deliberate {how} after a refresh");
    let message =
        at(&|l| l.contains(&wanted)).unwrap_or_else(|| panic!("the message is shown:\n{screen}"));
    let status = at(&|l| l.starts_with("TOP-EXITED=")).expect("status");
    assert!(command_line < message && message < status, "{screen}");
    if how == "panic" {
        assert!(lines[message - 1].contains("panicked at"), "{screen}");
    } else {
        assert!(lines[message].starts_with("observer: error: "), "{screen}");
        assert!(!screen.contains("panicked"), "{screen}");
    }
    assert!(
        !screen.contains("IN-STATE"),
        "no frame left behind:\n{screen}"
    );
    // Cooked mode: the line discipline echoes and edits lines again.
    tmux.keys(&["stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo -e -icanon -e -echo | sort | tr '\\n' ' '; echo", "Enter"]);
    tmux.wait_line("stty's modes", |l| l.trim() == "echo icanon");
    tmux.keys(&["echo cooked-$((6*7))", "Enter"]);
    tmux.wait_line("the shell echoing", |l| l.trim() == "cooked-42");
}

#[test]
fn top_redraws_to_the_new_size_when_the_terminal_is_resized() {
    if !privileged("top_redraws_to_the_new_size_when_the_terminal_is_resized") {
        return;
    }
    let ns = NetNs::new("topsize");
    let tmux = Tmux::start(160, 40);
    tmux.wait_line("the shell's prompt", |l| l.starts_with("PROMPT$"));
    let command = format!(
        "{} top --refresh-ms 200 --netns {}; echo TOP-EXITED=$?",
        bin().display(),
        ns.path().display()
    );
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_line("the column titles", |l| {
        l.starts_with("PID") && l.contains("SNI")
    });
    // The frame fills the terminal it has: the footer on the last row, the columns that fit.
    let fits = |width: usize, height: usize| {
        wait_for(Duration::from_secs(10), "a frame of the new size", || {
            let screen = tmux.screen();
            let lines: Vec<&str> = screen.lines().collect();
            (lines.len() == height
                && lines[0].starts_with("observer top")
                && lines[height - 1].starts_with("q quit")
                && lines.iter().all(|l| l.chars().count() <= width))
            .then_some(screen)
        })
    };
    for (width, height) in [(90, 20), (170, 45), (120, 12)] {
        tmux.run(&[
            "resize-window",
            "-t",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
        let screen = fits(width, height);
        // The column titles on their row, squeezed into the width when it is short.
        let lines: Vec<&str> = screen.lines().collect();
        assert!(
            lines[2].contains("1 Connections") && lines[3].starts_with("PID"),
            "{width}x{height}:\n{screen}"
        );
        // Nothing of a previous, larger frame is left: the row under the footer's is gone
        // and the footer itself is drawn once.
        assert_eq!(screen.matches("q quit").count(), 1, "{screen}");
    }
    tmux.keys(&["q"]);
    let exited = tmux.wait_line("the shell after top", |l| l.starts_with("TOP-EXITED="));
    assert_eq!(exited.trim(), "TOP-EXITED=0");
}
