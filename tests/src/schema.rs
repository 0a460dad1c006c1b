//! Every line the tests read from observer is checked against its JSON Schema in `docs/schema/`
//! (Draft 2020-12, formats asserted): `event.dataset` `observer.X` picks `docs/schema/X.json`.
//! A line with no schema, or one its schema rejects, fails the test that read it.

use std::{collections::BTreeMap, fs, path::PathBuf, sync::OnceLock};

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

include!(concat!(env!("OUT_DIR"), "/schemas.rs"));

/// `docs/schema/` (embedded at build time: see build.rs).
#[must_use]
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

/// Serves `$ref`s between the schemas (`tls.json#/…`) from `docs/schema/`, never the network.
struct Local;

impl Retrieve for Local {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.path().as_str().rsplit('/').next().unwrap_or_default();
        let text = SCHEMAS
            .iter()
            .find(|(n, _)| format!("{n}.json") == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("schema {uri}: no docs/schema/{name}"))?;
        Ok(serde_json::from_str(text)?)
    }
}

/// The validators, by dataset, built once per test binary.
fn validators() -> &'static BTreeMap<String, Validator> {
    static ALL: OnceLock<BTreeMap<String, Validator>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = BTreeMap::new();
        for &(stem, text) in SCHEMAS {
            let path = dir().join(format!("{stem}.json"));
            let schema: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .with_retriever(Local)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
            all.insert(format!("observer.{stem}"), validator);
        }
        all
    })
}

/// Every reason `line` breaks its schema, as `instance path: error`; empty when it is valid.
#[must_use]
pub fn errors(line: &Value) -> Vec<String> {
    let Some(dataset) = line["event"]["dataset"].as_str() else {
        return vec!["/event/dataset: missing: no schema applies".to_owned()];
    };
    let Some(validator) = validators().get(dataset) else {
        return vec![format!(
            "/event/dataset: {dataset:?} has no schema in docs/schema/"
        )];
    };
    validator
        .iter_errors(line)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Panics, naming every error, unless `line` is valid against its dataset's schema.
pub fn check(line: &Value) {
    let errors = errors(line);
    assert!(
        errors.is_empty(),
        "observer line breaks docs/schema:\n  {}\nline: {line}",
        errors.join("\n  ")
    );
    if let Some(path) = std::env::var_os("OBSERVER_SCHEMA_TALLY") {
        tally(line, &path);
    }
}

/// With `OBSERVER_SCHEMA_TALLY=FILE`, appends one byte to FILE per distinct line validated
/// (tests re-read the output while they wait; a line read again counts once per test binary).
fn tally(line: &Value, path: &std::ffi::OsStr) {
    use std::{
        collections::HashSet,
        hash::{DefaultHasher, Hash as _, Hasher as _},
        io::Write as _,
        sync::Mutex,
    };
    static SEEN: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
    let mut h = DefaultHasher::new();
    line.to_string().hash(&mut h);
    let new = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(h.finish());
    if new && let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(b".");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A closed connection record as observer writes it.
    fn closed() -> Value {
        json!({
            "@timestamp": "2026-11-24T06:19:40.125000Z",
            "schema_version": "1",
            "event": {
                "kind": "event", "category": ["network"], "type": ["connection", "end"],
                "dataset": "observer.connection", "action": "closed", "outcome": "success",
                "start": "2026-11-24T06:19:40.124000Z", "end": "2026-11-24T06:19:40.125000Z",
                "duration": 1_000_000
            },
            "host": {"name": "vm"},
            "conn": {
                "uid": "CLFxSj04Kl6KajKptq", "role": "client", "state": "SF",
                "history": "ShADdFf", "close_initiator": "local", "close_reason": "fin",
                "transitions": [
                    {"state": "SYN_SENT", "ts": "2026-11-24T06:19:40.124000Z"},
                    {"state": "ESTABLISHED", "ts": "2026-11-24T06:19:40.124100Z"},
                    {"state": "TIME_WAIT", "ts": "2026-11-24T06:19:40.125000Z"}
                ],
                "state_durations_ms": {"SYN_SENT": 0.1, "ESTABLISHED": 0.9},
                "final_state": "TIME_WAIT", "time_wait": true, "fin_received": true,
                "resets_sent": 0, "resets_received": 0, "owner_source": "connect",
                "pre_existing": false, "cookie": 4097, "netns": 4_026_532_000_u32,
                "peer_uid": "CQISArmXGHViI0byfQ"
            },
            "source": {"ip": "127.0.0.1", "port": 40000, "bytes": 5, "packets": 4},
            "destination": {"ip": "127.0.0.1", "port": 80, "bytes": 7, "packets": 4},
            "network": {
                "transport": "tcp", "type": "ipv4", "iana_number": "6",
                "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
            },
            "tcp": {
                "retransmits": 0, "retransmits_syn": 0, "retransmits_synack": 0,
                "retransmits_data": 0, "srtt_us": 30, "handshake_rtt_us": 100
            },
            "process": {"pid": 7, "name": "curl", "executable": "/usr/bin/curl",
                        "cgroup": "/user.slice"},
            "user": {"id": "0"},
            "peer": {"process": {"pid": 8, "name": "nginx"}}
        })
    }

    /// An update record of the same connection, still open.
    fn update() -> Value {
        let mut v = closed();
        v["event"]["type"] = json!(["connection", "info"]);
        v["event"]["action"] = json!("update");
        v["event"].as_object_mut().expect("event").remove("end");
        v["conn"]["state"] = json!("S1");
        v["conn"]["history"] = json!("ShADd");
        v["conn"]["close_initiator"] = json!("none");
        v["conn"]["close_reason"] = json!("open");
        v["conn"]["final_state"] = json!("ESTABLISHED");
        v["conn"]["time_wait"] = json!(false);
        v
    }

    /// `base` with `edit` applied at a JSON pointer: `None` removes the field.
    fn with(mut base: Value, pointer: &str, edit: Option<Value>) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        let obj = base
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent} is not an object"));
        match edit {
            Some(v) => obj.insert(key.to_owned(), v),
            None => obj.remove(key),
        };
        base
    }

    #[test]
    fn valid_records_pass() {
        for (name, line) in [("closed", closed()), ("update", update())] {
            assert_eq!(errors(&line), Vec::<String>::new(), "{name}");
        }
        let pre = with(
            with(update(), "/conn/pre_existing", Some(json!(true))),
            "/conn/history",
            Some(json!("Dd")),
        );
        assert_eq!(errors(&pre), Vec::<String>::new(), "pre-existing");
    }

    #[test]
    fn broken_records_are_rejected_where_they_break() {
        let cases: [(&str, Value, &str); 15] = [
            ("no uid", with(closed(), "/conn/uid", None), "/conn"),
            (
                "short uid",
                with(closed(), "/conn/uid", Some(json!("C123"))),
                "/conn/uid",
            ),
            (
                "bad Zeek state",
                with(closed(), "/conn/state", Some(json!("SX"))),
                "/conn/state",
            ),
            (
                "unknown top-level field",
                with(closed(), "/extra", Some(json!(1))),
                "",
            ),
            (
                "unknown conn field",
                with(closed(), "/conn/bogus", Some(json!(1))),
                "/conn",
            ),
            (
                "bad role",
                with(closed(), "/conn/role", Some(json!("peer"))),
                "/conn/role",
            ),
            (
                "bad close reason",
                with(closed(), "/conn/close_reason", Some(json!("eof"))),
                "/conn/close_reason",
            ),
            (
                "bad initiator",
                with(closed(), "/conn/close_initiator", Some(json!("both"))),
                "/conn/close_initiator",
            ),
            (
                "no end on a closed record",
                with(closed(), "/event/end", None),
                "/event",
            ),
            (
                "an end on an update",
                with(
                    update(),
                    "/event/end",
                    Some(json!("2026-11-24T06:19:40.125000Z")),
                ),
                "/event",
            ),
            (
                "timestamp without microseconds",
                with(closed(), "/@timestamp", Some(json!("2026-11-24T06:19:40Z"))),
                "/@timestamp",
            ),
            (
                "community id v2",
                with(
                    closed(),
                    "/network/community_id",
                    Some(json!("2:LQU9qZlK+B5F3KDmev6m5PMibrg=")),
                ),
                "/network/community_id",
            ),
            (
                "negative bytes",
                with(closed(), "/source/bytes", Some(json!(-1))),
                "/source/bytes",
            ),
            (
                "tls object without its source",
                with(
                    closed(),
                    "/tls",
                    Some(json!({"established": true, "client": {}})),
                ),
                "/tls",
            ),
            (
                "ipv6 address on ipv4",
                with(closed(), "/source/ip", Some(json!("::1"))),
                "/source/ip",
            ),
        ];
        for (name, line, at) in cases {
            let errors = errors(&line);
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{at}: "))),
                "{name}: want an error at {at:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn unknown_datasets_have_no_schema() {
        let line = with(closed(), "/event/dataset", Some(json!("observer.bogus")));
        assert!(
            errors(&line)[0].contains("no schema"),
            "{:?}",
            errors(&line)
        );
        let line = with(closed(), "/event", None);
        assert!(errors(&line)[0].contains("missing"), "{:?}", errors(&line));
    }

    #[test]
    fn every_schema_is_loaded() {
        let names: Vec<&str> = validators().keys().map(String::as_str).collect();
        for dataset in [
            "observer.agent",
            "observer.connection",
            "observer.loss",
            "observer.snapshot",
            "observer.state",
            "observer.tls",
        ] {
            assert!(names.contains(&dataset), "{dataset} in {names:?}");
        }
    }
}
