//! `otlp+http://HOST:PORT[/PATH]`: OpenTelemetry logs over OTLP/HTTP. Each batch of NDJSON
//! lines is one `ExportLogsServiceRequest`, sent as protobuf (`application/x-protobuf`) in a
//! POST to `PATH` (default `/v1/logs`) over a kept-alive HTTP/1.1 connection.
//!
//! The mapping:
//! - one `Resource`: `service.name` = `observer`, `service.version` = the agent's version,
//!   `host.name` = the host's name (as in the lines); one scope: `observer` and its version;
//! - one `LogRecord` per line: `time_unix_nano` from `@timestamp`, `observed_time_unix_nano`
//!   when the batch was sent, `event_name` = `event.dataset`, body = `event.action` (a string),
//!   severity WARN (13) for a firing `observer.anomaly` and for an `observer.loss` `loss` line,
//!   INFO (9) for the rest (the loss `summary` comes every run, whatever the counts);
//! - every field of the line as an attribute, in the line's order, under its dotted path as
//!   the NDJSON nests it (`conn.state_durations_ms.SYN_SENT`); strings, booleans, integers and
//!   floats as `string_value`, `bool_value`, `int_value`, `double_value` as the JSON has them
//!   (an integer past `i64::MAX` as its decimal string); null as an empty `AnyValue`; an array
//!   as an `array_value`, whose objects are `kvlist_value`s. An empty object has no field.
//!
//! Failures: an unreachable collector, a 5xx or a 429 returns an error, so the writer keeps the
//! batch and retries it (and warns once). Any other answer outside 2xx refuses the batch for
//! good: its lines are dropped, counted as the output's drops (`loss.sink.<name>.dropped`), and
//! the first refusal is said once on stderr; so are records a 2xx answer's partial success
//! rejects.

mod http;
mod record;

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;

use super::writer::Out;

/// NDJSON bytes per request at most (a longer line goes alone): well under collectors' usual
/// body limits, and a refused request costs no more than this.
const MAX_BATCH: usize = 1 << 20;
const NAME: &str = "observer";

pub struct OtlpOut {
    url: String,
    client: http::Client,
    resource: Resource,
    scope: InstrumentationScope,
    body: Vec<u8>,
    /// Lines refused for good since the writer last asked.
    rejected: u64,
    said_rejected: bool,
}

impl OtlpOut {
    /// Connects lazily: a collector that is down at start delays only this output.
    #[must_use]
    pub fn new(addr: &str, path: &str, host: String) -> Self {
        let text = |key: &str, value: String| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value)),
            }),
            ..KeyValue::default()
        };
        let version = env!("CARGO_PKG_VERSION");
        Self {
            url: format!("otlp+http://{addr}{path}"),
            client: http::Client::new(addr, path, "application/x-protobuf"),
            resource: Resource {
                attributes: vec![
                    text("service.name", NAME.to_owned()),
                    text("service.version", version.to_owned()),
                    text("host.name", host),
                ],
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: NAME.to_owned(),
                version: version.to_owned(),
                ..InstrumentationScope::default()
            },
            body: Vec::new(),
            rejected: 0,
            said_rejected: false,
        }
    }

    fn request(&self, lines: &[u8]) -> (ExportLogsServiceRequest, u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let log_records: Vec<_> = lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| record::log_record(l, now))
            .collect();
        let n = log_records.len() as u64;
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        (request, n)
    }

    /// Counts `n` of `sent` lines as refused for good, and says why the first time.
    fn refused(&mut self, n: u64, sent: u64, why: &str) {
        self.rejected += n.min(sent);
        if !self.said_rejected {
            self.said_rejected = true;
            eprintln!(
                "observer: warning: {} refused {n} of {sent} log records for good ({why}); refused records are dropped and counted with this output's drops in observer.loss — check the collector's log and the URL's path",
                self.url
            );
        }
    }
}

/// Up to the end of the last whole line within [`MAX_BATCH`], or the first line if longer.
fn batch(buf: &[u8]) -> usize {
    if buf.len() <= MAX_BATCH {
        return buf.len();
    }
    buf[..MAX_BATCH]
        .iter()
        .rposition(|&b| b == b'\n')
        .or_else(|| buf.iter().position(|&b| b == b'\n'))
        .map_or(buf.len(), |i| i + 1)
}

/// Up to 200 characters of a collector's answer, on one line, for a message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out.trim().to_owned()
}

impl Out for OtlpOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = batch(buf);
        let (request, sent) = self.request(&buf[..take]);
        self.body.clear();
        request
            .encode(&mut self.body)
            .map_err(std::io::Error::other)?;
        let response = self.client.post(&self.body)?;
        let status = response.status;
        let answer = format!("{status} {}", response.reason);
        match status {
            200..=299 => {
                let partial = ExportLogsServiceResponse::decode(response.body.as_slice())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .filter(|p| p.rejected_log_records > 0);
                if let Some(p) = partial {
                    let n = u64::try_from(p.rejected_log_records).unwrap_or(0);
                    self.refused(
                        n,
                        sent,
                        &format!("{answer}: {}", excerpt(p.error_message.as_bytes())),
                    );
                }
            }
            429 | 500..=599 => {
                return Err(std::io::Error::other(format!(
                    "the collector answered {answer}"
                )));
            }
            _ => {
                let why = match excerpt(&response.body) {
                    e if e.is_empty() => answer,
                    e => format!("{answer}: {e}"),
                };
                self.refused(sent, sent, &why);
            }
        }
        Ok(take)
    }

    fn rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }

    /// SIGHUP: a new connection, with the collector's name resolved again.
    fn reopen(&mut self) -> std::io::Result<()> {
        self.client.disconnect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_holds_whole_lines_up_to_the_bound() {
        let line = |len: usize| {
            let mut l = vec![b'x'; len - 1];
            l.push(b'\n');
            l
        };
        assert_eq!(batch(&line(10).repeat(3)), 30);
        let many = line(1000).repeat(MAX_BATCH / 1000 + 5);
        assert_eq!(batch(&many), MAX_BATCH / 1000 * 1000);
        let long = [line(MAX_BATCH + 10), line(10)].concat();
        assert_eq!(batch(&long), MAX_BATCH + 10, "a long line goes alone");
    }

    #[test]
    fn one_resource_one_scope_one_record_per_line() {
        let out = OtlpOut::new("127.0.0.1:4318", "/v1/logs", "box".to_owned());
        let (request, n) = out.request(
            b"{\"event\":{\"dataset\":\"a\",\"action\":\"b\"}}\n{\"event\":{\"dataset\":\"c\"}}\n",
        );
        assert_eq!(n, 2);
        let [resource] = request.resource_logs.as_slice() else {
            panic!("one resource")
        };
        let attrs: Vec<(&str, &str)> = resource
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => (kv.key.as_str(), s.as_str()),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            attrs,
            [
                ("service.name", "observer"),
                ("service.version", version),
                ("host.name", "box")
            ]
        );
        let [scope] = resource.scope_logs.as_slice() else {
            panic!("one scope")
        };
        let s = scope.scope.as_ref().expect("scope");
        assert_eq!((s.name.as_str(), s.version.as_str()), ("observer", version));
        let names: Vec<&str> = scope
            .log_records
            .iter()
            .map(|r| r.event_name.as_str())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(out.url, "otlp+http://127.0.0.1:4318/v1/logs");
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b" bad\nthing \r\n"), "bad thing");
        let long = "y".repeat(300);
        assert_eq!(excerpt(long.as_bytes()), format!("{}…", "y".repeat(200)));
    }
}
