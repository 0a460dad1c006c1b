//! `observer top` in a real terminal: tmux runs it inside a shell, the test makes traffic in
//! its own namespace, reads the screen with `capture-pane`, quits with `q`, and checks that the
//! shell got its normal screen back.

use std::{process::Command, time::Duration};

use observer_tests::{NetNs, Peer, observer::bin, privileged, wait_for};

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Self {
        let t = Self {
            socket: format!("obs-top-{}", std::process::id()),
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

    /// Waits until a screen line satisfies `f`; returns that line.
    fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
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
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn has_all(line: &str, parts: &[&str]) -> bool {
    let cols: Vec<&str> = line.split_whitespace().collect();
    parts.iter().all(|p| cols.contains(p))
}

#[test]
fn top_shows_a_live_connection_with_its_owner_and_state_then_restores_the_terminal() {
    if !privileged(
        "top_shows_a_live_connection_with_its_owner_and_state_then_restores_the_terminal",
    ) {
        return;
    }
    let ns = NetNs::new("top");
    let tmux = Tmux::start(160, 40);
    let command = format!(
        "{} top --refresh-ms 200 --netns {}; echo TOP-EXITED=$?",
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
