//! Size-based rotation of a file output (`file:///PATH?max_size=…&max_backups=…&gzip=…`) under
//! real traffic: every file within `max_size` and of whole lines, the files together the
//! stream exactly once and in order, as many backups as the rule predicts from the lines, and
//! logrotate's `mv` + SIGHUP still working.
//!
//! Each run also writes the whole stream to `all.ndjson`, an output without rotation: what
//! the rotated files must add up to, byte for byte.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use observer_tests::{
    NetNs, Observer, field,
    observer::{parse_lines, scratch},
    privileged,
    traffic::churn,
    wait_for,
};

const MAX: u64 = 1 << 20;
const CONNECTIONS: u32 = 3000;

/// The rule replayed: the sizes of the files `lines` make, oldest first. A line goes into the
/// current file unless that holds something and the line would take it past `max`.
fn predict(lines: &[u8], max: u64) -> Vec<u64> {
    let mut files = vec![0u64];
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let len = line.len() as u64;
        let current = files.last_mut().expect("a file");
        if *current > 0 && *current + len > max {
            files.push(len);
        } else {
            *current += len;
        }
    }
    files
}

/// A log directory, removed on drop.
struct Logs(PathBuf);

impl Logs {
    fn new() -> Self {
        let dir = scratch("logs");
        std::fs::create_dir(&dir).expect("log dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `--sink` for the rotated `o.ndjson` with `options`, and the unrotated `all.ndjson`.
    fn sinks(&self, options: &str) -> [String; 4] {
        let dir = self.0.display();
        [
            "--sink".into(),
            format!("file://{dir}/o.ndjson?name=rot&max_size=1MiB&{options}"),
            "--sink".into(),
            format!("file://{dir}/all.ndjson?name=all"),
        ]
    }

    /// Each file's name and mode.
    fn listing(&self) -> BTreeMap<String, u32> {
        std::fs::read_dir(&self.0)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                let mode = e.metadata().expect("metadata").permissions().mode() & 0o777;
                (e.file_name().into_string().expect("utf-8"), mode)
            })
            .collect()
    }

    /// What a file holds, a `.gz` decompressed.
    fn read(&self, name: &str) -> Vec<u8> {
        let raw = std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        if Path::new(name).extension().is_none_or(|x| x != "gz") {
            return raw;
        }
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{name} does not decompress: {e}"));
        out
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::env::var_os("OBSERVER_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The observer with `sinks`, a ring that holds every event (nothing lost for capture's sake).
fn start(ns: &NetNs, sinks: &[String]) -> Observer {
    let mut args: Vec<&str> = sinks.iter().map(String::as_str).collect();
    args.extend(["--ring-mib", "16"]);
    Observer::start(ns, &args)
}

/// Stops the observer and checks that the run was clean; returns the whole stream.
fn stop(obs: Observer, logs: &Logs) -> Vec<u8> {
    let stopped = obs.stop();
    stopped.assert_clean();
    assert!(!stopped.stderr.contains("warning"), "{}", stopped.stderr);
    let all = logs.read("all.ndjson");
    // The unrotated output is the harness's own output, line for line.
    assert_eq!(parse_lines(&String::from_utf8_lossy(&all)), stopped.lines);
    let last = stopped.lines.last().expect("the stopped line");
    assert_eq!(field(last, "event.action"), "stopped", "{last}");
    let lines = stopped.lines.len() as u64;
    for sink in ["rot", "all"] {
        assert_eq!(
            field(last, &format!("observer.sink.{sink}.dropped")),
            0,
            "{last}"
        );
        // The stopped line itself is not counted in it.
        assert_eq!(
            field(last, &format!("observer.sink.{sink}.lines")),
            lines - 1,
            "{last}"
        );
    }
    assert_eq!(
        stopped.dataset("observer.connection").len(),
        2 * CONNECTIONS as usize,
        "both ends of every connection"
    );
    all
}

/// Checks a rotated file: whole lines of NDJSON, within `MAX` unless it is one longer line.
fn check_file(name: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(text.ends_with('\n'), "{name} ends inside a line");
    let lines = parse_lines(text);
    assert!(
        bytes.len() as u64 <= MAX || lines.len() == 1,
        "{name} is {} bytes",
        bytes.len()
    );
}

#[test]
fn rotated_files_are_the_stream_in_order_each_within_max_size() {
    if !privileged("rotated_files_are_the_stream_in_order_each_within_max_size") {
        return;
    }
    let ns = NetNs::new("rot");
    let logs = Logs::new();
    let obs = start(&ns, &logs.sinks("max_backups=50"));
    let began = Instant::now();
    churn(&ns, CONNECTIONS);
    let _ = obs.wait_records("observer.connection", 2 * CONNECTIONS as usize);
    let all = stop(obs, &logs);
    let took = began.elapsed();

    let predicted = predict(&all, MAX);
    let backups = predicted.len() - 1;
    assert!(all.len() as u64 >= 6 * MAX, "{} bytes", all.len());
    assert!(backups < 50, "nothing deleted: {backups}");
    let mut want: BTreeMap<String, u32> = (1..=backups)
        .map(|i| (format!("o.ndjson.{i}"), 0o640))
        .collect();
    want.insert("o.ndjson".into(), 0o640);
    want.insert("all.ndjson".into(), 0o640);
    assert_eq!(logs.listing(), want);

    // Oldest first: o.ndjson.N … o.ndjson.1, o.ndjson.
    let names: Vec<String> = (1..=backups)
        .rev()
        .map(|i| format!("o.ndjson.{i}"))
        .chain(["o.ndjson".to_owned()])
        .collect();
    let files: Vec<Vec<u8>> = names.iter().map(|n| logs.read(n)).collect();
    for (name, bytes) in names.iter().zip(&files) {
        check_file(name, bytes);
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
    assert_eq!(sizes, predicted, "each file's size, oldest first");
    assert_eq!(files.concat(), all, "every line once, in order");
    eprintln!(
        "rotation: {} bytes in {} files {sizes:?}, {took:?}",
        all.len(),
        files.len()
    );
}

#[test]
fn gzip_keeps_the_newest_backups_whole_and_contiguous() {
    if !privileged("gzip_keeps_the_newest_backups_whole_and_contiguous") {
        return;
    }
    let ns = NetNs::new("rotgz");
    let logs = Logs::new();
    let obs = start(&ns, &logs.sinks("max_backups=2&gzip=true"));
    let began = Instant::now();
    churn(&ns, CONNECTIONS);
    let _ = obs.wait_records("observer.connection", 2 * CONNECTIONS as usize);
    let all = stop(obs, &logs);
    let took = began.elapsed();

    let predicted = predict(&all, MAX);
    assert!(
        predicted.len() > 3,
        "older backups were deleted: {predicted:?}"
    );
    let want: BTreeMap<String, u32> = ["o.ndjson", "o.ndjson.1.gz", "o.ndjson.2.gz", "all.ndjson"]
        .into_iter()
        .map(|n| (n.to_owned(), 0o640))
        .collect();
    assert_eq!(logs.listing(), want);
    let names = ["o.ndjson.2.gz", "o.ndjson.1.gz", "o.ndjson"];
    let files: Vec<Vec<u8>> = names.iter().map(|n| logs.read(n)).collect();
    for (name, bytes) in names.iter().zip(&files) {
        check_file(name, bytes);
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
    assert_eq!(sizes, predicted[predicted.len() - 3..], "the newest three");
    let tail = files.concat();
    assert!(
        all.ends_with(&tail),
        "the newest part of the stream, no gap"
    );
    let compressed: Vec<u64> = names[..2]
        .iter()
        .map(|n| std::fs::metadata(logs.path(n)).expect("gz").len())
        .collect();
    eprintln!("gzip rotation: {sizes:?} bytes, compressed {compressed:?}, {took:?}");
}

#[test]
fn sighup_after_a_mv_starts_a_new_file_and_rotation_goes_on() {
    if !privileged("sighup_after_a_mv_starts_a_new_file_and_rotation_goes_on") {
        return;
    }
    let ns = NetNs::new("rothup");
    let logs = Logs::new();
    let obs = start(&ns, &logs.sinks("max_backups=50"));
    churn(&ns, CONNECTIONS / 2);
    let _ = obs.wait_records("observer.connection", CONNECTIONS as usize);
    // The rotated output has caught up with the harness's (its own writer thread).
    let size = |name: &Path| std::fs::metadata(name).map_or(0, |m| m.len());
    wait_for(Duration::from_secs(10), "the rotated output", || {
        let rotated: u64 = logs
            .listing()
            .keys()
            .filter(|n| n.starts_with("o.ndjson"))
            .map(|n| size(&logs.path(n)))
            .sum();
        (rotated == size(&obs.output)).then_some(())
    });
    let before = logs.listing().len() - 2;
    // logrotate's way: rename, then `kill -HUP`.
    std::fs::rename(logs.path("o.ndjson"), logs.path("moved.ndjson")).expect("mv");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(libc::pid_t::try_from(obs.pid()).expect("pid"), libc::SIGHUP) };
    wait_for(Duration::from_secs(10), "the new file", || {
        let text = std::fs::read_to_string(logs.path("o.ndjson")).unwrap_or_default();
        text.ends_with('\n').then_some(())
    });
    churn(&ns, CONNECTIONS / 2);
    let _ = obs.wait_records("observer.connection", 2 * CONNECTIONS as usize);
    let all = stop(obs, &logs);

    // The stream splits where the new file begins: at the `reopened` line.
    let mut split = 0;
    for line in all.split_inclusive(|&b| b == b'\n') {
        let text = std::str::from_utf8(line).expect("utf-8");
        if field(&parse_lines(text)[0], "event.action") == "reopened" {
            break;
        }
        split += line.len();
    }
    let (old, new) = all.split_at(split);
    assert!(!new.is_empty(), "a reopened line");
    let (old, new) = (predict(old, MAX), predict(new, MAX));
    let after = new.len() - 1;
    let backups = old.len() - 1 + after;
    assert_eq!(old.len() - 1, before, "backups before the mv");
    assert!(after > 0, "rotated after the mv too");
    let mut want: BTreeMap<String, u32> = (1..=backups)
        .map(|i| (format!("o.ndjson.{i}"), 0o640))
        .collect();
    for name in ["o.ndjson", "moved.ndjson", "all.ndjson"] {
        want.insert(name.into(), 0o640);
    }
    assert_eq!(logs.listing(), want);
    // Oldest first: the backups made before the mv (moved up since), the moved file, those
    // made after, the current file.
    let names: Vec<String> = (after + 1..=backups)
        .rev()
        .map(|i| format!("o.ndjson.{i}"))
        .chain(["moved.ndjson".to_owned()])
        .chain((1..=after).rev().map(|i| format!("o.ndjson.{i}")))
        .chain(["o.ndjson".to_owned()])
        .collect();
    let files: Vec<Vec<u8>> = names.iter().map(|n| logs.read(n)).collect();
    for (name, bytes) in names.iter().zip(&files) {
        check_file(name, bytes);
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
    assert_eq!(sizes, [old, new].concat(), "each file's size, oldest first");
    assert_eq!(files.concat(), all, "every line once, in order");
    let agent: Vec<String> = parse_lines(&String::from_utf8_lossy(&all))
        .iter()
        .filter(|l| field(l, "event.dataset") == "observer.agent")
        .map(|l| field(l, "event.action").as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(agent, ["started", "reopened", "stopped"]);
}
