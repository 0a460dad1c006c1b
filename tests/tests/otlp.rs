//! The `otlp+http://` output, checked by a receiver that decodes each request with the official
//! OpenTelemetry protobuf definitions (`tests/peers/otlp_receiver.py`). The agent also writes a
//! file, the ground truth: every line of it arrives as one log record, each field an attribute
//! of the right protobuf kind under its dotted path (the mapping in observer/src/sink/otlp).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use observer_tests::{
    NetNs, Observer, field,
    observer::{Stopped, scratch},
    parse_ts, privileged,
    traffic::churn,
    wait_for,
};
use serde_json::{Value, json};

/// Where `cargo xtask bootstrap --tests` installs the receiver's Python packages; the QEMU
/// guests get a copy at the same path.
fn python_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("target/peers-python")
}

/// The receiver, in the host's namespace (where the agent's own connections are, outside the
/// captured one).
struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    out: PathBuf,
    port: u16,
}

impl Receiver {
    fn start(args: &[&str]) -> Self {
        let out = scratch("otlp.jsonl");
        let mut child = Command::new("/usr/bin/python3")
            .arg("-u")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/otlp_receiver.py"))
            .arg("--out")
            .arg(&out)
            .args(args)
            .env("PYTHONPATH", python_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the OTLP receiver");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut receiver = Self {
            child,
            stdin,
            stdout,
            out,
            port: 0,
        };
        let hello = receiver.reply();
        receiver.port = u16::try_from(hello["port"].as_u64().expect("port")).expect("a port");
        if !args.contains(&"--listen-on-stdin") {
            assert_eq!(receiver.reply(), json!({"listening": true}));
        }
        receiver
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("receiver stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "the receiver said {line:?} ({e}); is opentelemetry-proto in {}? (`cargo xtask bootstrap --tests`)",
                python_path().display()
            )
        })
    }

    /// Starts listening (until now connections were refused).
    fn listen(&mut self) {
        let mut stdin = self.stdin.take().expect("not listening yet");
        stdin.write_all(b"go\n").expect("receiver stdin");
        assert_eq!(self.reply(), json!({"listening": true}));
    }

    fn url(&self) -> String {
        format!("otlp+http://127.0.0.1:{}", self.port)
    }

    /// Every record received so far, with the status each request was answered.
    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("receiver line"))
            .collect()
    }

    fn answered(&self, status: u64) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["answered"] == status)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// An NDJSON value as the receiver writes the `AnyValue` the mapping makes of it.
fn any(v: &Value) -> Value {
    match v {
        Value::Null => json!({}),
        Value::Bool(b) => json!({ "bool_value": b }),
        Value::String(s) => json!({ "string_value": s }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => json!({ "int_value": i }),
            (None, Some(u), _) => json!({ "string_value": u.to_string() }),
            (None, None, f) => json!({ "double_value": f.expect("a float") }),
        },
        Value::Array(a) => json!({ "array_value": a.iter().map(any).collect::<Vec<_>>() }),
        Value::Object(o) => {
            let pairs: Vec<Value> = o.iter().map(|(k, v)| json!([k, any(v)])).collect();
            json!({ "kvlist_value": pairs })
        }
    }
}

/// A line's fields by dotted path, as attributes.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    if let Value::Object(o) = v {
        for (k, v) in o {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten(&key, v, out);
        }
    } else {
        assert!(out.insert(prefix.to_owned(), any(v)).is_none(), "{prefix}");
    }
}

/// Sorts key-value lists by key: the receiver keeps the wire's order, this test's JSON maps
/// may not.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.contains_key("kvlist_value") => {
            let mut pairs: Vec<Value> = o["kvlist_value"]
                .as_array()
                .expect("pairs")
                .iter()
                .map(|p| json!([p[0], sorted(&p[1])]))
                .collect();
            pairs.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
            json!({ "kvlist_value": pairs })
        }
        Value::Object(o) if o.contains_key("array_value") => {
            let items = o["array_value"].as_array().expect("items");
            json!({ "array_value": items.iter().map(sorted).collect::<Vec<_>>() })
        }
        other => other.clone(),
    }
}

/// A record's attributes by key; each key once.
fn attributes(record: &Value) -> BTreeMap<String, Value> {
    let pairs = record["attributes"].as_array().expect("attributes");
    let map: BTreeMap<String, Value> = pairs
        .iter()
        .map(|p| (p[0].as_str().expect("key").to_owned(), sorted(&p[1])))
        .collect();
    assert_eq!(map.len(), pairs.len(), "a key twice: {record}");
    map
}

/// The agent's version, from its first line.
fn version(lines: &[Value]) -> Value {
    let started = lines.first().expect("lines");
    assert_eq!(field(started, "event.action"), "started", "{started}");
    field(started, "observer.version").clone()
}

/// Each record is its line: attributes, times, severity, name, body, resource and scope; sent
/// within `window_ns` by the agent of `version`.
fn assert_same(lines: &[Value], records: &[Value], window_ns: (u64, u64), version: &Value) {
    assert_eq!(records.len(), lines.len(), "one record per line");
    for (line, record) in lines.iter().zip(records) {
        let mut expected = BTreeMap::new();
        flatten("", line, &mut expected);
        let expected: BTreeMap<String, Value> =
            expected.into_iter().map(|(k, v)| (k, sorted(&v))).collect();
        let got = attributes(record);
        for (key, value) in &expected {
            assert_eq!(got.get(key), Some(value), "{key} of {line}");
        }
        assert_eq!(got.len(), expected.len(), "{record}");
        let ts = parse_ts(line["@timestamp"].as_str().expect("@timestamp"));
        assert_eq!(
            record["time_unix_nano"],
            u64::try_from(ts).expect("after 1970") * 1000
        );
        let observed = record["observed_time_unix_nano"]
            .as_u64()
            .expect("observed");
        assert!(
            (window_ns.0..=window_ns.1).contains(&observed),
            "sent during the run: {record}"
        );
        let (dataset, action) = (field(line, "event.dataset"), field(line, "event.action"));
        let warn = (dataset == "observer.anomaly" && action == "firing")
            || (dataset == "observer.loss" && action == "loss");
        let (number, text) = if warn { (13, "WARN") } else { (9, "INFO") };
        assert_eq!(
            (&record["severity_number"], &record["severity_text"]),
            (&json!(number), &json!(text)),
            "{line}"
        );
        assert_eq!(record["event_name"], *dataset);
        assert_eq!(record["body"], json!({ "string_value": action }));
        assert_eq!(
            record["resource"],
            json!({
                "service.name": {"string_value": "observer"},
                "service.version": {"string_value": version},
                "host.name": {"string_value": field(line, "host.name")},
            })
        );
        assert_eq!(
            record["scope"],
            json!({"name": "observer", "version": version, "attributes": []})
        );
        assert_eq!(
            (
                &record["method"],
                &record["path"],
                &record["content_type"],
                &record["dropped_attributes_count"],
                &record["flags"]
            ),
            (
                &json!("POST"),
                &json!("/v1/logs"),
                &json!("application/x-protobuf"),
                &json!(0),
                &json!(0)
            )
        );
    }
}

fn now_ns() -> u64 {
    u64::try_from(observer_tests::now_us()).expect("after 1970") * 1000
}

/// Runs the agent with the receiver's output and a file, makes `n` connections (after `then`
/// returns), stops it; the file's lines and what the agent said.
fn run(
    ns: &NetNs,
    receiver: &mut Receiver,
    n: u32,
    then: impl FnOnce(&Observer, &mut Receiver),
) -> Stopped {
    let url = receiver.url();
    let obs = Observer::start(ns, &["--sink", &url]);
    then(&obs, receiver);
    churn(ns, n);
    let _ = obs.wait_records("observer.connection", 2 * n as usize);
    obs.stop()
}

const CONNECTIONS: u32 = 50;

#[test]
fn every_line_arrives_as_one_log_record_with_its_fields_as_typed_attributes() {
    if !privileged("every_line_arrives_as_one_log_record_with_its_fields_as_typed_attributes") {
        return;
    }
    let ns = NetNs::new("otlp");
    let mut receiver = Receiver::start(&[]);
    let start = now_ns();
    let stopped = run(&ns, &mut receiver, CONNECTIONS, |_, _| {});
    stopped.assert_clean();
    let records = receiver.records();
    assert_same(
        &stopped.lines,
        &records,
        (start, now_ns()),
        &version(&stopped.lines),
    );
    assert!(records.iter().all(|r| r["answered"] == 200));
    let connections = records
        .iter()
        .filter(|r| r["event_name"] == "observer.connection")
        .count();
    assert_eq!(connections, 2 * CONNECTIONS as usize);
    // One kept-alive connection carried every request.
    let clients: std::collections::BTreeSet<u64> = records
        .iter()
        .map(|r| r["client"].as_u64().expect("client port"))
        .collect();
    assert_eq!(clients.len(), 1, "{clients:?}");
    let last = stopped.lines.last().expect("the stopped line");
    assert_eq!(
        (
            field(last, "observer.sink.otlp.lines"),
            field(last, "observer.sink.otlp.dropped")
        ),
        (&json!(stopped.lines.len() - 1), &json!(0)),
        "{last}"
    );
    assert!(!stopped.stderr.contains("warning"), "{}", stopped.stderr);
}

#[test]
fn a_collector_answering_503_is_retried_with_the_same_batch_and_nothing_is_lost() {
    const FAILED: u64 = 3;
    if !privileged("a_collector_answering_503_is_retried_with_the_same_batch_and_nothing_is_lost") {
        return;
    }
    let ns = NetNs::new("otlp503");
    let mut receiver = Receiver::start(&["--fail-first", &FAILED.to_string()]);
    let start = now_ns();
    let stopped = run(&ns, &mut receiver, CONNECTIONS, |_, _| {});
    stopped.assert_clean();
    assert_same(
        &stopped.lines,
        &receiver.answered(200),
        (start, now_ns()),
        &version(&stopped.lines),
    );
    // The refused requests were one batch, sent again unchanged until it was taken.
    let records = receiver.records();
    let batch = |n: u64| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["request"] == n)
            .map(attributes)
            .map(|a| json!(a))
            .collect()
    };
    let failed: Vec<u64> = records
        .iter()
        .filter(|r| r["answered"] == 503)
        .map(|r| r["request"].as_u64().expect("request"))
        .collect();
    assert!(
        failed.iter().all(|&n| n < FAILED),
        "only the first requests: {failed:?}"
    );
    assert!(!batch(FAILED).is_empty());
    for n in 0..FAILED {
        assert_eq!(batch(n), batch(FAILED), "request {n}");
    }
    let url = receiver.url();
    assert_eq!(
        stopped
            .stderr
            .matches(&format!(
                "observer: warning: cannot write to {url}: the collector answered 503 Service Unavailable; retrying every 200 ms"
            ))
            .count(),
        1,
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped.stderr.matches("warning").count(),
        1,
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped
            .stderr
            .matches(&format!(
                "observer: writing to {url} works again; its queue dropped nothing meanwhile"
            ))
            .count(),
        1,
        "{}",
        stopped.stderr
    );
}

#[test]
fn a_collector_down_at_start_costs_one_warning_and_no_record() {
    if !privileged("a_collector_down_at_start_costs_one_warning_and_no_record") {
        return;
    }
    let ns = NetNs::new("otlpdown");
    // Bound but not listening: connections are refused.
    let mut receiver = Receiver::start(&["--listen-on-stdin"]);
    let url = receiver.url();
    let warning = format!(
        "observer: warning: cannot write to {url}: cannot connect to 127.0.0.1:{}: Connection refused (os error 111); retrying every 200 ms",
        receiver.port
    );
    let start = now_ns();
    let stopped = run(&ns, &mut receiver, CONNECTIONS, |obs, receiver| {
        let stderr = || std::fs::read_to_string(obs.stderr_path()).unwrap_or_default();
        wait_for(Duration::from_secs(10), "the warning", || {
            stderr().contains(&warning).then_some(())
        });
        receiver.listen();
        wait_for(Duration::from_secs(10), "the recovery", || {
            stderr()
                .contains(&format!(
                    "observer: writing to {url} works again; its queue dropped nothing meanwhile"
                ))
                .then_some(())
        });
    });
    stopped.assert_clean();
    assert_same(
        &stopped.lines,
        &receiver.records(),
        (start, now_ns()),
        &version(&stopped.lines),
    );
    assert_eq!(
        stopped.stderr.matches(&warning).count(),
        1,
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped.stderr.matches("warning").count(),
        1,
        "{}",
        stopped.stderr
    );
}

#[test]
fn a_batch_refused_for_good_is_dropped_counted_and_said_once() {
    if !privileged("a_batch_refused_for_good_is_dropped_counted_and_said_once") {
        return;
    }
    let ns = NetNs::new("otlp400");
    let mut receiver = Receiver::start(&["--fail-first", "1", "--fail-status", "400"]);
    let start = now_ns();
    let stopped = run(&ns, &mut receiver, CONNECTIONS, |_, _| {});
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let refused = receiver.answered(400);
    let taken = receiver.answered(200);
    let k = refused.len();
    assert!(k > 0, "the first request was refused");
    // The refused records were the first lines; every later line arrived.
    let (window, version) = ((start, now_ns()), version(&stopped.lines));
    assert_same(&stopped.lines[..k], &refused, window, &version);
    assert_same(&stopped.lines[k..], &taken, window, &version);
    let last = stopped.lines.last().expect("the stopped line");
    assert_eq!(
        (
            field(last, "observer.sink.otlp.lines"),
            field(last, "observer.sink.otlp.dropped"),
            field(last, "observer.sink.file.dropped"),
        ),
        (&json!(stopped.lines.len() - 1), &json!(k), &json!(0)),
        "{last}"
    );
    let summary = stopped
        .dataset("observer.loss")
        .into_iter()
        .find(|l| field(l, "event.action") == "summary")
        .expect("a loss summary");
    assert_eq!(
        field(&summary, "loss.total.sink.otlp.dropped"),
        &json!(k),
        "{summary}"
    );
    let url = receiver.url();
    let said = format!(
        "observer: warning: {url}/v1/logs refused {k} of {k} log records for good (400 Bad Request: refused by the test receiver)"
    );
    assert_eq!(
        stopped.stderr.matches(&said).count(),
        1,
        "{}",
        stopped.stderr
    );
    assert_eq!(
        stopped.stderr.matches("warning").count(),
        1,
        "{}",
        stopped.stderr
    );
}
