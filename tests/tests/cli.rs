//! The command line: `check`, and clear errors for bad input.

use std::process::{Command, Output};

use observer_tests::{observer::bin, privileged};

fn observer(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run observer")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_hook_on_this_kernel() {
    if !privileged("check_reports_every_hook_on_this_kernel") {
        return;
    }
    let out = observer(&["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for line in [
        "tracefs",
        "BTF",
        "tracepoint tcp:tcp_retransmit_skb",
        "tracepoint tcp:tcp_retransmit_synack",
        "tracepoint tcp:tcp_send_reset",
        "tracepoint tcp:tcp_receive_reset",
        "tracepoint sched:sched_process_exec",
        "tracepoint sched:sched_process_exit",
        "tracepoint syscalls:sys_exit_accept4",
        "tracepoint syscalls:sys_exit_accept",
        "kernel layout (BTF + tracefs)",
        "load and attach",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} row: {stdout}"));
        assert!(row.contains(" ok "), "{row}");
    }
    assert!(
        stdout.contains("11 hooks: tp_btf:inet_sock_set_state, tp_btf:inet_sock_set_state/inet_sock_set_state_nested,"),
        "{stdout}"
    );
    // syn_flood's SYN counter (docs/anomalies.md).
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .expect("/proc/self/mounts")
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .expect("a cgroup2 mount");
    assert!(
        stdout.contains(&format!(", cgroup_skb:{cgroup2}/listener_counts\n")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("observer can run on this host.\n"),
        "{stdout}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    if !privileged("bad_input_gets_a_clear_error") {
        return;
    }
    let cases: [(&[&str], i32, &str); 7] = [
        (
            &["run", "--output", "/nonexistent/dir/out.ndjson"],
            1,
            "cannot open /nonexistent/dir/out.ndjson for appending",
        ),
        (
            &["run", "--netns", "/etc/hostname"],
            1,
            "/etc/hostname is not a namespace file",
        ),
        (
            &["run", "--netns", "/run/netns/no-such-namespace"],
            1,
            "cannot open network namespace /run/netns/no-such-namespace",
        ),
        (
            &["replay", "/etc/hostname"],
            1,
            "/etc/hostname is not an observer recording (bad magic)",
        ),
        (
            &["run", "--ring-mib", "3"],
            2,
            "must be a power of two between 1 and 1024",
        ),
        (
            &["run", "--port", "http"],
            2,
            "invalid value 'http' for '--port <PORT>'",
        ),
        // stdout is a pipe here: nothing is drawn into it.
        (
            &["top"],
            1,
            "observer top draws on a terminal, and its stdout is not one",
        ),
    ];
    for (args, code, message) in cases {
        let out = observer(args);
        let (stdout, stderr) = text(&out);
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn without_root_it_says_what_to_do() {
    if !privileged("without_root_it_says_what_to_do") {
        return;
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(bin())
            .args(args)
            .output()
            .expect("setpriv")
    };
    let out = as_nobody(&["run", "--output", "/dev/null"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("observer must run as root to load eBPF programs: run it with sudo"),
        "{stderr}"
    );
    let out = as_nobody(&["check"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("privileges: run as root (sudo observer …)"),
        "{stdout}"
    );
}

#[test]
fn version_and_help() {
    let out = observer(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out).0,
        format!("observer {}\n", env!("CARGO_PKG_VERSION"))
    );
    let (help, _) = text(&observer(&["--help"]));
    for sub in ["run", "check", "replay"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} in {help}"
        );
    }
}
