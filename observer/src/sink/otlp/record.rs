//! One NDJSON line → one OTLP `LogRecord`: every field an attribute under its dotted path,
//! read straight from the line's bytes in their order (no intermediate `serde_json::Value`).

use std::fmt;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value},
    logs::v1::{LogRecord, SeverityNumber},
};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The record of `line`, observed at `observed_ns`. A line that is not a JSON object (never
/// written by the agent) becomes a record whose body is its text, so that nothing is lost.
#[must_use]
pub fn log_record(line: &[u8], observed_ns: u64) -> LogRecord {
    let mut attributes = Vec::with_capacity(64);
    let mut key = String::with_capacity(64);
    let mut de = serde_json::Deserializer::from_slice(line);
    let parsed = de
        .deserialize_map(Fields {
            prefix: &mut key,
            out: &mut attributes,
        })
        .and_then(|()| de.end());
    if parsed.is_err() {
        return LogRecord {
            observed_time_unix_nano: observed_ns,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".to_owned(),
            body: Some(string(String::from_utf8_lossy(line).trim_end().to_owned())),
            ..LogRecord::default()
        };
    }
    let text = |key: &str| {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            }
        })
    };
    let dataset = text("event.dataset").unwrap_or_default().to_owned();
    let action = text("event.action").unwrap_or_default().to_owned();
    let time = text("@timestamp").and_then(unix_ns).unwrap_or(0);
    let warn = matches!(
        (dataset.as_str(), action.as_str()),
        ("observer.anomaly", "firing") | ("observer.loss", "loss")
    );
    let (severity, severity_text) = if warn {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: severity_text.to_owned(),
        body: Some(string(action)),
        attributes,
        event_name: dataset,
        ..LogRecord::default()
    }
}

fn string(s: String) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the lines' `@timestamp`) → nanoseconds since the epoch.
#[must_use]
pub fn unix_ns(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    if b.len() != 27 || b[26] != b'Z' || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0_i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, us) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from((secs * 1_000_000 + us) * 1_000).ok()
}

/// An object's fields, appended to `out` as attributes under `prefix`.
struct Fields<'a> {
    prefix: &'a mut String,
    out: &'a mut Vec<KeyValue>,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let base = self.prefix.len();
        while map
            .next_key_seed(Key {
                prefix: self.prefix,
                base,
            })?
            .is_some()
        {
            map.next_value_seed(Field {
                prefix: self.prefix,
                out: self.out,
            })?;
            self.prefix.truncate(base);
        }
        Ok(())
    }
}

/// Appends `.key` (or `key` at the top) to the prefix.
struct Key<'a> {
    prefix: &'a mut String,
    base: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        if self.base > 0 {
            self.prefix.push('.');
        }
        self.prefix.push_str(key);
        Ok(())
    }
}

/// One field's value: a nested object's fields become attributes of their own; anything else
/// is one attribute.
struct Field<'a> {
    prefix: &'a mut String,
    out: &'a mut Vec<KeyValue>,
}

impl Field<'_> {
    fn push(self, value: Option<Value>) {
        self.out.push(KeyValue {
            key: self.prefix.clone(),
            value: Some(AnyValue { value }),
            ..KeyValue::default()
        });
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Fields {
            prefix: self.prefix,
            out: self.out,
        }
        .visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = Any.visit_seq(seq)?;
        self.push(value.value);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Some(Value::StringValue(v.to_owned())));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Some(Value::BoolValue(v)));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Some(Value::IntValue(v)));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Some(int(v)));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Some(Value::DoubleValue(v)));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(None);
        Ok(())
    }
}

/// An unsigned JSON integer: an `int_value`, or past `i64::MAX` its decimal digits as a string
/// (exact, where a double would round).
fn int(v: u64) -> Value {
    i64::try_from(v).map_or_else(|_| Value::StringValue(v.to_string()), Value::IntValue)
}

/// A value inside an array: objects stay whole there, as key-value lists.
struct Any;

impl<'de> DeserializeSeed<'de> for Any {
    type Value = AnyValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AnyValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Any {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
        let mut values = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            values.push(KeyValue {
                key,
                value: Some(map.next_value_seed(Any)?),
                ..KeyValue::default()
            });
        }
        Ok(AnyValue {
            value: Some(Value::KvlistValue(KeyValueList { values })),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Any)? {
            values.push(v);
        }
        Ok(AnyValue {
            value: Some(Value::ArrayValue(ArrayValue { values })),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AnyValue, E> {
        Ok(string(v.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AnyValue, E> {
        Ok(AnyValue {
            value: Some(Value::BoolValue(v)),
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AnyValue, E> {
        Ok(AnyValue {
            value: Some(Value::IntValue(v)),
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AnyValue, E> {
        Ok(AnyValue {
            value: Some(int(v)),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AnyValue, E> {
        Ok(AnyValue {
            value: Some(Value::DoubleValue(v)),
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<AnyValue, E> {
        Ok(AnyValue { value: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(clippy::unnecessary_wraps, reason = "the shape of `KeyValue::value`")]
    fn v(value: Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(value) })
    }

    fn s(text: &str) -> Option<AnyValue> {
        v(Value::StringValue(text.to_owned()))
    }

    fn attrs(record: &LogRecord) -> Vec<(&str, Option<AnyValue>)> {
        record
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone()))
            .collect()
    }

    #[test]
    fn every_field_becomes_a_typed_attribute_under_its_dotted_path_in_order() {
        let line = br#"{"@timestamp":"2026-12-08T00:24:17.024447Z","event":{"dataset":"observer.connection","action":"closed","type":["connection","end"]},"conn":{"state_durations_ms":{"SYN_SENT":0.093},"time_wait":true,"transitions":[{"state":"SYN_SENT","n":1}],"age_ms":null},"process":{"pid":18924},"big":18446744073709551615,"neg":-3,"empty":{},"esc\"aped":"a\nb"}"#;
        let r = log_record(line, 7);
        let array = |values: Vec<Option<AnyValue>>| {
            v(Value::ArrayValue(ArrayValue {
                values: values.into_iter().map(Option::unwrap_or_default).collect(),
            }))
        };
        let transition = v(Value::KvlistValue(KeyValueList {
            values: vec![
                KeyValue {
                    key: "state".into(),
                    value: s("SYN_SENT"),
                    ..KeyValue::default()
                },
                KeyValue {
                    key: "n".into(),
                    value: v(Value::IntValue(1)),
                    ..KeyValue::default()
                },
            ],
        }));
        assert_eq!(
            attrs(&r),
            [
                ("@timestamp", s("2026-12-08T00:24:17.024447Z")),
                ("event.dataset", s("observer.connection")),
                ("event.action", s("closed")),
                ("event.type", array(vec![s("connection"), s("end")])),
                (
                    "conn.state_durations_ms.SYN_SENT",
                    v(Value::DoubleValue(0.093))
                ),
                ("conn.time_wait", v(Value::BoolValue(true))),
                ("conn.transitions", array(vec![transition])),
                ("conn.age_ms", Some(AnyValue { value: None })),
                ("process.pid", v(Value::IntValue(18924))),
                ("big", s("18446744073709551615")),
                ("neg", v(Value::IntValue(-3))),
                ("esc\"aped", s("a\nb")),
            ]
        );
        assert_eq!(r.time_unix_nano, 1_796_689_457_024_447_000);
        assert_eq!(r.observed_time_unix_nano, 7);
        assert_eq!(r.event_name, "observer.connection");
        assert_eq!(r.body, s("closed"));
        assert_eq!(
            (r.severity_number, r.severity_text.as_str()),
            (SeverityNumber::Info as i32, "INFO")
        );
    }

    #[test]
    fn firing_anomalies_and_losses_are_warnings_the_rest_info() {
        let cases = [
            ("observer.anomaly", "firing", SeverityNumber::Warn, "WARN"),
            ("observer.anomaly", "resolved", SeverityNumber::Info, "INFO"),
            ("observer.loss", "loss", SeverityNumber::Warn, "WARN"),
            ("observer.loss", "summary", SeverityNumber::Info, "INFO"),
            ("observer.agent", "started", SeverityNumber::Info, "INFO"),
            (
                "observer.connection",
                "closed",
                SeverityNumber::Info,
                "INFO",
            ),
        ];
        for (dataset, action, number, text) in cases {
            let line = format!(r#"{{"event":{{"dataset":"{dataset}","action":"{action}"}}}}"#);
            let r = log_record(line.as_bytes(), 0);
            assert_eq!(
                (r.severity_number, r.severity_text.as_str()),
                (number as i32, text),
                "{line}"
            );
            assert_eq!(r.time_unix_nano, 0, "no @timestamp: unknown");
        }
    }

    #[test]
    fn a_line_that_is_not_an_object_is_kept_as_its_text() {
        for line in [&b"[1,2]\n"[..], b"{\"a\":1", b"{\"a\":1} x"] {
            let r = log_record(line, 0);
            assert!(r.attributes.is_empty());
            assert_eq!(
                r.body,
                s(String::from_utf8_lossy(line).trim_end()),
                "{line:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_read_exactly_and_bad_ones_refused() {
        assert_eq!(unix_ns("1970-01-01T00:00:00.000001Z"), Some(1_000));
        assert_eq!(
            unix_ns("2024-02-29T23:59:59.999999Z"),
            Some(1_709_251_199_999_999_000)
        );
        for bad in [
            "2024-02-29T23:59:59Z",
            "2024-13-01T00:00:00.000000Z",
            "2024-02-29 23:59:59.999999Z",
            "2024-02-29T23:59:59.99999xZ",
            "1969-12-31T23:59:59.999999Z",
        ] {
            assert_eq!(unix_ns(bad), None, "{bad}");
        }
    }
}
