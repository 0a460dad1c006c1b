//! The configuration file (docs/config.md): a real run configured by it, a flag overriding it,
//! and every kind of bad file refused by `run` and `check` with its place and exit status 2.

use std::process::Command;

use observer_tests::{
    NetNs, Observer, Peer, field,
    observer::{bin, scratch},
    privileged, states,
    traffic::one_connection,
};

/// A scratch TOML file, removed on drop.
struct File(std::path::PathBuf);

impl File {
    fn new(text: &str) -> Self {
        let path = scratch("toml");
        std::fs::write(&path, text).expect("write config");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn every_kind_of_bad_file_is_refused_with_its_place_by_run_and_check() {
    let cases: &[(&str, &str)] = &[
        (
            "tls = true\nmax_connectoins = 5\n",
            "2:1: unknown key `max_connectoins`; valid at the top level: output, sink, filter, queue_mib, \
             record, port, netns, transitions, max_connections, update_interval, ring_mib, \
             accept_hook, control_socket, tls, duration, [anomalies] (did you mean \
             `max_connections`?)",
        ),
        (
            "max_connections = 5\n",
            "1:19: key `max_connections`: invalid value '5' for '--max-connections <N>': 5 is \
             not in 1024..=16777216",
        ),
        (
            "[anomalies]\nenabled = \"yes\"\n",
            "2:11: key `anomalies.enabled`: expected true or false, found a string",
        ),
        (
            "[anomalies.syn_flood]\nwindow = \"${OBSERVER_TEST_NEVER_SET}\"\n",
            "2:10: key `anomalies.syn_flood.window`: environment variable \
             OBSERVER_TEST_NEVER_SET is not set (write ${OBSERVER_TEST_NEVER_SET:-DEFAULT} for \
             a default)",
        ),
        (
            "[anomalies\n",
            "1:11: not valid TOML: unclosed table, expected `]`",
        ),
    ];
    for (text, place) in cases {
        let file = File::new(text);
        for args in [
            &["run", "--config", file.path()][..],
            &["--config", file.path()][..],
            &["check", "--config", file.path()][..],
        ] {
            let out = Command::new(bin()).args(args).output().expect("observer");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert_eq!(
                stderr,
                format!("observer: error: {}:{place}\n", file.path()),
                "{args:?}"
            );
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
    let missing = scratch("toml");
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .expect("observer");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "observer: error: cannot read the configuration {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

#[test]
fn check_validates_a_good_file_then_checks_the_host() {
    if !privileged("check_validates_a_good_file_then_checks_the_host") {
        return;
    }
    let file = File::new("tls = true\nring_mib = 16\n[anomalies.rst_storm]\nthreshold = 0\n");
    let out = Command::new(bin())
        .args(["check", "--config", file.path()])
        .output()
        .expect("observer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "observer: the configuration {} is valid (5 arguments for run)",
            file.path()
        )),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("load and attach"),
        "the host checks ran too"
    );
}

#[test]
fn a_file_configures_the_agent_and_a_flag_overrides_it() {
    if !privileged("a_file_configures_the_agent_and_a_flag_overrides_it") {
        return;
    }
    let ns = NetNs::new("conf");
    let mut server = Peer::spawn(&ns, "srv");
    let port = server.port("listen 4 127.0.0.1", "port");
    let file = File::new(&format!(
        "port = \"${{OBSERVER_TEST_NEVER_SET:-{port}}}\"\n\
         transitions = true\n\
         ring_mib = 4\n\
         queue_mib = 0x2\n\
         [anomalies]\n\
         enabled = true\n"
    ));
    let obs = Observer::start(&ns, &["--config", file.path(), "--ring-mib", "16"]);
    // Another port first: the file's port filter keeps it out.
    let _other = one_connection(&ns, 0);
    let mut client = Peer::spawn(&ns, "cli");
    client.ok(&format!("connect 4 127.0.0.1 {port}"));
    server.ok("accept");
    client.ok("close");
    server.ok("wait_eof");
    server.ok("close");
    let _ = obs.wait_records("observer.connection", 2);
    let stopped = obs.stop();
    stopped.assert_clean();
    assert!(
        stopped
            .stderr
            .contains(&format!("observer: configuration from {}", file.path())),
        "{}",
        stopped.stderr
    );
    let started = &stopped.dataset("observer.agent")[0];
    assert_eq!(
        field(started, "observer.config.ring_mib"),
        16,
        "the flag wins"
    );
    assert_eq!(field(started, "observer.config.queue_mib"), 2, "the file's");
    assert_eq!(
        field(started, "observer.config.transitions"),
        true,
        "{started}"
    );
    let records = stopped.dataset("observer.connection");
    assert_eq!(records.len(), 2, "only the file's port: {records:#?}");
    for r in &records {
        assert_eq!(field(r, "destination.port"), port, "{r}");
    }
    // --transitions from the file: a state line per state each record went through.
    let changes = stopped.dataset("observer.state");
    for r in &records {
        let mine = changes
            .iter()
            .filter(|c| field(c, "conn.uid") == field(r, "conn.uid"))
            .count();
        assert_eq!(mine, states(r).len(), "{r}");
    }
}

#[test]
fn a_sink_on_the_command_line_replaces_the_files_and_one_given_twice_is_refused() {
    if !privileged("a_sink_on_the_command_line_replaces_the_files_and_one_given_twice_is_refused") {
        return;
    }
    let ns = NetNs::new("confsink");
    let (from_file, from_flag) = (scratch("ndjson"), scratch("ndjson"));
    let file = File::new(&format!(
        "[[sink]]\nurl = \"file://{}\"\n",
        from_file.display()
    ));
    let flag = format!("file://{}", from_flag.display());
    let obs = Observer::start(&ns, &["--config", file.path(), "--sink", &flag]);
    let port = one_connection(&ns, 0);
    let _ = obs.wait_records("observer.connection", 2);
    obs.stop().assert_clean();
    assert!(
        !from_file.exists(),
        "the file's [[sink]] was replaced by --sink"
    );
    let lines =
        observer_tests::observer::parse_lines(&std::fs::read_to_string(&from_flag).expect("read"));
    let _ = std::fs::remove_file(&from_flag);
    let records: Vec<_> = lines
        .iter()
        .filter(|l| field(l, "event.dataset") == "observer.connection")
        .collect();
    assert_eq!(records.len(), 2, "{lines:#?}");
    assert!(records.iter().all(|r| field(r, "destination.port") == port));

    // The same file twice, once rotated: refused before capture starts.
    let out = Command::new(bin())
        .args([
            "run",
            "--config",
            "none",
            "--output",
            "/tmp/o.ndjson",
            "--sink",
        ])
        .arg("file:///tmp/o.ndjson?max_size=1MiB")
        .output()
        .expect("observer");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "observer: error: the output file is given twice (as file:///tmp/o.ndjson and \
         file:///tmp/o.ndjson?max_size=1MiB): its lines would be written twice; give each \
         output once (a --sink on the command line replaces the file's)\n"
    );
}
