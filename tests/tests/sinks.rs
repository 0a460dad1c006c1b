//! Outputs that never stall capture: a reader that stops reading costs only its own lines,
//! counted exactly in the stream; SIGHUP after logrotate's `mv` starts a new file.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    NetNs, Observer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    privileged,
    traffic::{churn, one_connection},
    wait_for,
};
use serde_json::Value;

fn dropped(line: &Value, path: &str) -> u64 {
    field(line, path).as_u64().unwrap_or(0)
}

#[test]
fn a_reader_that_stops_reading_costs_only_its_own_lines_counted_exactly() {
    const CONNECTIONS: u32 = 3000;
    if !privileged("a_reader_that_stops_reading_costs_only_its_own_lines_counted_exactly") {
        return;
    }
    let ns = NetNs::new("stall");
    let stderr_path = scratch("stderr");
    // A 1 MiB queue holds some 800 of the 6000 records; a ring that holds them all, so that
    // the kernel side has no excuse to lose any.
    let mut child = Command::new(bin())
        .args(["run", "--netns"])
        .arg(ns.path())
        .args([
            "--queue-mib",
            "1",
            "--ring-mib",
            "16",
            "--control-socket",
            "none",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn observer");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the started line");
    assert!(first.contains("\"started\""), "{first}");

    // The reader stops: the pipe fills (64 KiB), then the queue, then lines are dropped.
    churn(&ns, CONNECTIONS);
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    wait_for(Duration::from_secs(30), "the queue-full warning", || {
        stderr().contains("stdout cannot keep up").then_some(())
    });

    // It reads again, and the run stops.
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("the rest");
        rest
    });
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).expect("pid"),
            libc::SIGINT,
        )
    };
    let status = child.wait().expect("exit");
    let rest = reader.join().expect("reader");
    let stderr = stderr();
    let _ = std::fs::remove_file(&stderr_path);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr.matches("cannot keep up").count(), 1, "{stderr}");

    let lines = parse_lines(&format!("{first}{rest}"));
    let stopped = lines.last().expect("lines");
    assert_eq!(field(stopped, "event.action"), "stopped", "{stopped}");
    // Capture lost nothing: every socket's record was made, and the kernel dropped no event.
    let ends = u64::from(CONNECTIONS) * 2;
    assert_eq!(field(stopped, "observer.records"), ends, "{stopped}");
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
    let handed = dropped(stopped, "observer.sink.stdout.lines");
    let lost = dropped(stopped, "observer.sink.stdout.dropped");
    assert!(
        lost > 0,
        "the stalled reader made the queue drop: {stopped}"
    );
    assert_eq!(lines.len() as u64 - 1, handed - lost, "{stopped}");
    let received = of_dataset(&lines, "observer.connection").len() as u64;
    assert_eq!(
        received + lost,
        ends,
        "only records were dropped: {stopped}"
    );
    assert_eq!(
        dropped(summary, "loss.total.sink.stdout.dropped"),
        lost,
        "{summary}"
    );
    let reported: u64 = losses
        .iter()
        .map(|l| dropped(l, "loss.sink.stdout.dropped"))
        .sum();
    assert_eq!(reported, lost, "the deltas add up: {losses:#?}");
    assert!(
        losses
            .iter()
            .any(|l| field(l, "event.action") == "loss"
                && dropped(l, "loss.sink.stdout.dropped") > 0),
        "reported while running, not only at exit: {losses:#?}"
    );
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    parse_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn sighup_after_a_rename_starts_a_new_file_and_loses_nothing() {
    if !privileged("sighup_after_a_rename_starts_a_new_file_and_loses_nothing") {
        return;
    }
    let ns = NetNs::new("hup");
    let dir = scratch("logs");
    std::fs::create_dir(&dir).expect("log dir");
    let live = dir.join("observer.ndjson");
    let rotated = dir.join("observer.ndjson.1");
    let netns = ns.path();
    let obs = Observer::start_with(&[
        "run",
        "--netns",
        netns.to_str().expect("utf-8"),
        "--output",
        live.to_str().expect("utf-8"),
    ]);
    let before = one_connection(&ns, 0);
    let _ = obs.wait_records("observer.connection", 2);
    // logrotate's default: rename, then `postrotate kill -HUP`.
    std::fs::rename(&live, &rotated).expect("rotate");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(libc::pid_t::try_from(obs.pid()).expect("pid"), libc::SIGHUP) };
    wait_for(Duration::from_secs(10), "the new file", || {
        (!of_dataset(&read_lines(&live), "observer.agent").is_empty()).then_some(())
    });
    let after = one_connection(&ns, 0);
    let _ = obs.wait_records("observer.connection", 2);
    let live_mode = mode(&live);
    let stopped = obs.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let old = read_lines(&rotated);
    // The live file as it was at exit (the observer handle removes it).
    let new = stopped.lines.clone();
    let actions = |lines: &[Value]| -> Vec<String> {
        of_dataset(lines, "observer.agent")
            .iter()
            .map(|l| field(l, "event.action").as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(actions(&old), ["started"]);
    assert_eq!(actions(&new), ["reopened", "stopped"]);
    assert_eq!(
        field(&new[0], "event.action"),
        "reopened",
        "the new file's first line"
    );
    let ports = |lines: &[Value]| -> Vec<u64> {
        of_dataset(lines, "observer.connection")
            .iter()
            .map(|r| field(r, "destination.port").as_u64().expect("port"))
            .collect()
    };
    assert_eq!(ports(&old), [u64::from(before); 2], "{old:#?}");
    assert_eq!(ports(&new), [u64::from(after); 2], "{new:#?}");
    // Nothing lost or doubled across the two files: every line handed to the output is in one.
    let last = new.last().expect("the stopped line");
    assert_eq!(field(last, "observer.sink.file.dropped"), 0, "{last}");
    assert_eq!(
        field(last, "observer.sink.file.lines"),
        (old.len() + new.len() - 1) as u64,
        "{last}"
    );
    assert_eq!(field(last, "observer.records"), 4, "{last}");
    // Connection records name every process and peer: not for every local user.
    assert_eq!((mode(&rotated), live_mode), (0o640, 0o640));
    let _ = std::fs::remove_dir_all(&dir);
}
