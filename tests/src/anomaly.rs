//! Shared by the anomaly tests (docs/anomalies.md): waiting for alert lines, checking the
//! fields every alert carries against docs/schema/anomaly.json, and recording an observer's
//! input to check that `observer replay` gives the same alerts.

use std::{process::Command, time::Duration};

use serde_json::{Value, json};

use crate::{
    NetNs, Observer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    parse_ts,
    tls::validate,
};

pub const ANOMALY: &str = "observer.anomaly";

/// Waits for the `n`th alert line; on timeout, fails with the last lines of the output, which
/// show what the detector was given.
#[must_use]
pub fn wait_alerts(obs: &Observer, n: usize, timeout: Duration) -> Vec<Value> {
    obs.wait_dataset(ANOMALY, n, timeout, |lines, _| {
        let last = &lines[lines.len().saturating_sub(40)..];
        let text: Vec<String> = last.iter().map(Value::to_string).collect();
        format!(
            "the last {} of {} output lines:\n{}",
            last.len(),
            lines.len(),
            text.join("\n")
        )
    })
}

/// The input of an observer recorded (`--record`) with its detector flags, to check that
/// `observer replay` gives the same alerts; the file goes when this does.
pub struct Recording {
    path: std::path::PathBuf,
    flags: Vec<String>,
}

impl Recording {
    /// Starts an observer in `ns` with `flags`, recording.
    #[must_use]
    pub fn start(ns: &NetNs, flags: &[&str]) -> (Observer, Self) {
        Self::start_with(ns, &[], flags)
    }

    /// Starts an observer in `ns` with `run_only` (capture flags such as `--tls`, which replay
    /// does not take) and the detector `flags`, recording.
    #[must_use]
    pub fn start_with(ns: &NetNs, run_only: &[&str], flags: &[&str]) -> (Observer, Self) {
        let path = scratch("rec");
        let rec = path.to_str().expect("utf-8").to_owned();
        let mut args = vec!["--record", &rec];
        args.extend_from_slice(run_only);
        args.extend_from_slice(flags);
        let obs = Observer::start(ns, &args);
        let flags = flags.iter().map(|&f| f.to_owned()).collect();
        (obs, Self { path, flags })
    }

    /// The alerts `observer replay` finds in the recording with the same flags.
    #[must_use]
    pub fn replayed(&self) -> Vec<Value> {
        let out = scratch("ndjson");
        let status = Command::new(bin())
            .arg("replay")
            .args(&self.flags)
            .arg("--output")
            .arg(&out)
            .arg(&self.path)
            .status()
            .expect("replay");
        assert!(status.success());
        // Every line is schema-checked; the alerts are compared.
        let text = std::fs::read_to_string(&out).expect("replay output");
        let alerts = of_dataset(&parse_lines(&text), ANOMALY);
        let _ = std::fs::remove_file(&out);
        alerts
    }

    /// Replaying gives exactly `alerts`.
    pub fn assert_replays(&self, alerts: &[Value]) {
        assert_eq!(self.replayed(), alerts, "replay gives the same alerts");
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `docs/schema/anomaly.json`.
#[must_use]
pub fn schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/anomaly.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/schema/anomaly.json"))
        .expect("schema json")
}

/// The fields every alert carries, and its schema.
pub fn check_common(a: &Value, rule: &str, status: &str) {
    validate(a, &schema(), ANOMALY);
    assert_eq!(field(a, "event.kind"), "alert", "{a}");
    assert_eq!(field(a, "event.dataset"), ANOMALY, "{a}");
    assert_eq!(field(a, "rule.id"), rule, "{a}");
    assert_eq!(field(a, "anomaly.status"), status, "{a}");
    assert_eq!(field(a, "event.action"), status, "{a}");
    assert!(field(a, "event.severity").as_u64().is_some(), "{a}");
    assert!(
        field(a, "event.reason")
            .as_str()
            .is_some_and(|r| r.len() > 20),
        "{a}"
    );
}

/// One socket that a `close_wait_stuck` or `fin_wait_2_stuck` test leaves stuck: the rule,
/// the owner, the peer it names and the listening ports it reports.
pub struct StuckSocket<'a> {
    pub rule: &'a str,
    pub pid: u32,
    pub name: &'a str,
    pub peer: String,
    pub listen_ports: Value,
}

impl StuckSocket<'_> {
    /// The firing alert, stuck since `since_us` with the rule's `--…-after 2`: one socket,
    /// the default threshold of 1, its peer and ports, and fired within its latency (the
    /// threshold, plus at most a table read period and slack).
    pub fn check_fired(&self, a: &Value, since_us: i64) {
        check_common(a, self.rule, "firing");
        assert_eq!(field(a, "process.pid"), self.pid, "{a}");
        assert_eq!(field(a, "process.name"), self.name, "{a}");
        assert_eq!(field(a, "anomaly.observed"), 1, "{a}");
        assert_eq!(field(a, "anomaly.threshold"), 1, "default min: {a}");
        assert_eq!(field(a, "anomaly.window_s"), 2, "{a}");
        assert_eq!(field(a, "anomaly.peers"), &json!([self.peer]), "{a}");
        assert_eq!(field(a, "anomaly.listen_ports"), &self.listen_ports, "{a}");
        let age = field(a, "anomaly.oldest_age_s").as_u64().expect("age");
        assert!((2..=4).contains(&age), "{a}");
        let after = parse_ts(field(a, "@timestamp").as_str().expect("ts")) - since_us;
        assert!(
            (1_990_000..4_500_000).contains(&after),
            "fired {after} µs after: {a}"
        );
    }

    /// The resolving alert, at most 2.5 s after the socket left its state at `since_us`.
    pub fn check_resolved(&self, r: &Value, since_us: i64) {
        check_common(r, self.rule, "resolved");
        assert_eq!(field(r, "process.pid"), self.pid, "{r}");
        assert_eq!(field(r, "anomaly.observed"), 0, "{r}");
        assert_eq!(field(r, "anomaly.peak"), 1, "{r}");
        let after = parse_ts(field(r, "@timestamp").as_str().expect("ts")) - since_us;
        assert!(after < 2_500_000, "resolved {after} µs after: {r}");
    }
}

/// Stops `obs` a little after `both` (the firing and resolving alerts of one stuck socket):
/// nothing else fired, the alert's sample is the `role` end's connection record, and the
/// recording replays to the same alerts.
pub fn finish_stuck(obs: Observer, recording: &Recording, both: &[Value], role: &str) {
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = obs.stop();
    stopped.assert_clean();
    let alerts = stopped.dataset(ANOMALY);
    assert_eq!(alerts, both, "no flapping: {alerts:#?}");
    let record = stopped
        .dataset("observer.connection")
        .into_iter()
        .find(|c| field(c, "conn.role") == role)
        .expect("the stuck socket's record");
    let a = &both[0];
    assert_eq!(
        field(a, "conn.uids"),
        &json!([field(&record, "conn.uid")]),
        "{a}"
    );
    recording.assert_replays(&alerts);
}
