//! Shared by the anomaly tests (docs/anomalies.md): waiting for alert lines, checking the
//! fields every alert carries against docs/schema/anomaly.json, and recording an observer's
//! input to check that `observer replay` gives the same alerts.

use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::{
    NetNs, Observer, field,
    observer::{bin, of_dataset, parse_lines, scratch},
    tls::validate,
    wait_for,
};

pub const ANOMALY: &str = "observer.anomaly";

/// Waits for the `n`th alert line.
#[must_use]
pub fn wait_alerts(obs: &Observer, n: usize, timeout: Duration) -> Vec<Value> {
    wait_for(timeout, &format!("{n} alerts"), || {
        let found = of_dataset(&obs.lines(), ANOMALY);
        (found.len() >= n).then_some(found)
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
