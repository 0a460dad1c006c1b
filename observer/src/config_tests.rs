use std::{fmt::Write as _, path::Path};

use clap::CommandFactory as _;

use super::*;

fn run() -> Command {
    crate::cli::Cli::command()
        .find_subcommand("run")
        .cloned()
        .expect("run")
}

fn env(name: &str) -> Option<String> {
    match name {
        "LOG_DIR" => Some("/var/log/obs".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn args(text: &str) -> Result<Vec<String>, String> {
    to_args(Path::new("/etc/o.toml"), text, &run(), &env)
        .map(|a| {
            a.into_iter()
                .map(|s| s.into_string().expect("utf-8"))
                .collect()
        })
        .map_err(|e| e.to_string())
}

#[test]
fn every_flag_of_run_has_a_key_in_its_table() {
    let keys = keys(&run());
    let find = |flag: &str| {
        let k = keys
            .iter()
            .find(|k| k.flag() == flag)
            .unwrap_or_else(|| panic!("{flag} has no key"));
        (k.table.clone(), k.name.clone())
    };
    let top = |name: &str| (None, name.to_owned());
    let rule = |t: &str, name: &str| (Some(t.to_owned()), name.to_owned());
    assert_eq!(find("--max-connections"), top("max_connections"));
    assert_eq!(find("--output"), top("output"));
    assert_eq!(find("--port"), top("port"));
    assert_eq!(
        find("--duration"),
        top("duration"),
        "after the anomaly flags"
    );
    assert_eq!(find("--anomalies"), rule("anomalies", "enabled"));
    assert_eq!(
        find("--syn-flood-window"),
        rule("anomalies.syn_flood", "window")
    );
    assert_eq!(
        find("--syn-flood-half-open"),
        rule("anomalies.syn_flood", "half_open")
    );
    assert_eq!(
        find("--rst-storm"),
        rule("anomalies.rst_storm", "threshold")
    );
    assert_eq!(
        find("--rst-storm-factor"),
        rule("anomalies.rst_storm", "factor")
    );
    assert_eq!(
        find("--close-wait-after"),
        rule("anomalies.close_wait_stuck", "after")
    );
    assert_eq!(
        find("--fin-wait-2-min"),
        rule("anomalies.fin_wait_2_stuck", "min")
    );
    assert_eq!(
        find("--accept-queue-window"),
        rule("anomalies.accept_queue_overflow", "window")
    );
    assert_eq!(
        find("--time-wait-pressure"),
        rule("anomalies.time_wait_pressure", "threshold")
    );
    // Every flag but --help and --config, each once.
    let flags = run()
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| !matches!(*l, "help" | "config"))
        .count();
    assert_eq!(keys.len(), flags);
    let mut names: Vec<String> = keys.iter().map(dotted).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), keys.len(), "no two flags share a key");
}

#[test]
fn a_file_becomes_the_flags_it_stands_for() {
    let text = r#"
output = "${LOG_DIR}/observer.ndjson"
max_connections = 65_536
ring_mib = 0x10
tls = true
accept_hook = false

[anomalies]
enabled = true

[anomalies.syn_flood]
window = 3
rate = 50

[anomalies.close_wait_stuck]
after = 30
"#;
    assert_eq!(
        args(text).expect("valid"),
        // Keys in order within a table, the top level first.
        [
            "--max-connections",
            "65536",
            "--output",
            "/var/log/obs/observer.ndjson",
            "--ring-mib",
            "16",
            "--tls",
            "--anomalies",
            "--syn-flood-rate",
            "50",
            "--syn-flood-window",
            "3",
            "--close-wait-after",
            "30",
        ]
    );
    assert_eq!(args("").expect("empty"), Vec::<String>::new());
}

#[test]
fn sinks_are_urls_or_tables_and_tables_become_urls() {
    let text = r#"
[[sink]]
url = "stdout"

[[sink]]
url = "file:///var/log/o.ndjson"
max_size = "10MiB"
max_backups = 3
gzip = true

[[sink]]
url = "tcp://${HOST:-127.0.0.1}:5140"
name = "syslog"
filter = "dport:443 & !comm:curl"
"#;
    assert_eq!(
        args(text).expect("valid"),
        [
            "--sink",
            "stdout",
            "--sink",
            "file:///var/log/o.ndjson?gzip=true&max_backups=3&max_size=10MiB",
            "--sink",
            "tcp://127.0.0.1:5140?filter=dport:443 %26 !comm:curl&name=syslog",
        ]
    );
    assert_eq!(
        args("[sink]\nurl = \"unix:///run/v.sock\"\n").expect("one table"),
        ["--sink", "unix:///run/v.sock"]
    );
    assert_eq!(
        args("sink = [\"stdout\", \"tcp://h:1\"]\n").expect("an array of URLs"),
        ["--sink", "stdout", "--sink", "tcp://h:1"]
    );
}

#[test]
fn each_kind_of_error_names_the_place_the_key_and_what_is_valid() {
    let cases: &[(&str, &str)] = &[
        (
            "max_conections = 5\n",
            "/etc/o.toml:1:1: unknown key `max_conections`; valid at the top level: output, \
             sink, filter, queue_mib, record, port, netns, transitions, max_connections, update_interval, \
             ring_mib, accept_hook, control_socket, tls, duration, [anomalies] (did you mean \
             `max_connections`?)",
        ),
        (
            "tls = true\n  max_connections = 5\n",
            "/etc/o.toml:2:21: key `max_connections`: invalid value '5' for \
             '--max-connections <N>': 5 is not in 1024..=16777216",
        ),
        (
            "port = \"https\"\n",
            "/etc/o.toml:1:8: key `port`: invalid value 'https' for '--port <PORT>': invalid \
             digit found in string",
        ),
        (
            "tls = \"yes\"\n",
            "/etc/o.toml:1:7: key `tls`: expected true or false, found a string",
        ),
        (
            "ring_mib = [8]\n",
            "/etc/o.toml:1:12: key `ring_mib`: expected a MIB value, found an array",
        ),
        (
            "ring_mib = 3\n",
            "/etc/o.toml:1:12: key `ring_mib`: invalid value '3' for '--ring-mib <MIB>': must \
             be a power of two between 1 and 1024",
        ),
        (
            "[anomalies.syn_flod]\nwindow = 3\n",
            "/etc/o.toml:1:12: unknown key `anomalies.syn_flod`; valid in [anomalies]: \
             enabled, [anomalies.close_wait_stuck], [anomalies.fin_wait_2_stuck], \
             [anomalies.connect_failures], [anomalies.rst_storm], \
             [anomalies.retransmit_storm], [anomalies.time_wait_pressure], \
             [anomalies.tls_handshake_failures], [anomalies.event_loss], \
             [anomalies.syn_flood], [anomalies.accept_queue_overflow] (did you mean \
             `syn_flood`?)",
        ),
        (
            "[anomalies.syn_flood]\nwindows = 3\n",
            "/etc/o.toml:2:1: unknown key `anomalies.syn_flood.windows`; valid in \
             [anomalies.syn_flood]: rate, ratio, half_open, window (did you mean `window`?)",
        ),
        (
            "[anomalies.syn_flood]\nwindow = 0\n",
            "/etc/o.toml:2:10: key `anomalies.syn_flood.window`: invalid value '0' for \
             '--syn-flood-window <SECONDS>': 0 is not in 1..18446744073709551615",
        ),
        (
            "[[sink]]\nurl = \"tcp://h:1\"\nmax_sise = 1\n",
            "/etc/o.toml:1:1: key `sink`: unknown key `max_sise` in a [[sink]] table; valid: \
             url, name, filter, max_size, max_backups, gzip",
        ),
        (
            "[[sink]]\nname = \"a\"\n",
            "/etc/o.toml:1:1: key `sink`: a [[sink]] table needs a `url` (stdout, \
             file:///PATH, tcp://HOST:PORT, …)",
        ),
        (
            "sink = [\"stdout\", \"ftp://h\"]\n",
            "/etc/o.toml:1:19: key `sink`: invalid value 'ftp://h' for '--sink <URL>': unknown \
             output scheme `ftp`; use stdout, file:///PATH, tcp://HOST:PORT, unix:///PATH or \
             otlp+http://HOST:PORT",
        ),
        (
            "anomalies = 1\n",
            "/etc/o.toml:1:13: `anomalies` must be a table ([anomalies])",
        ),
        (
            "output = \"${LOGS}/x\"\n",
            "/etc/o.toml:1:10: key `output`: environment variable LOGS is not set (write \
             ${LOGS:-DEFAULT} for a default)",
        ),
        (
            "output = \n",
            "/etc/o.toml:1:10: not valid TOML: string values must be quoted, expected literal \
             string",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(args(text).expect_err(text), *want, "{text}");
    }
}

#[test]
fn variables_expand_with_defaults_and_dollars_escape() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("plain", Ok("plain")),
        ("${LOG_DIR}/a", Ok("/var/log/obs/a")),
        ("${NOPE:-/tmp}/a", Ok("/tmp/a")),
        ("${EMPTY:-x}", Ok("x")),
        ("${EMPTY}", Ok("")),
        ("${LOG_DIR:-x}", Ok("/var/log/obs")),
        ("cost $$5 $x", Ok("cost $5 $x")),
        (
            "${NOPE}",
            Err("environment variable NOPE is not set (write ${NOPE:-DEFAULT} for a default)"),
        ),
        ("${LOG_DIR", Err("`${` without its `}` in \"${LOG_DIR\"")),
    ];
    for (input, want) in cases {
        assert_eq!(
            expand(input, &env).as_deref(),
            want.map_err(str::to_owned).as_deref(),
            "{input}"
        );
    }
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_column("a = 1\nbé = 2\n", 10), (2, 4));
    assert_eq!(line_column("x", 0), (1, 1));
}

/// The key tables of docs/config.md, as the parser sees them.
fn reference() -> String {
    let keys = keys(&run());
    let mut tables: Vec<Option<String>> = Vec::new();
    for k in &keys {
        if !tables.contains(&k.table) {
            tables.push(k.table.clone());
        }
    }
    let mut out = String::new();
    for table in tables {
        let _ = writeln!(
            out,
            "### {}\n\n| key | flag | default | meaning |\n|---|---|---|---|",
            table
                .as_ref()
                .map_or("Top level".to_owned(), |t| format!("`[{t}]`"))
        );
        for k in keys.iter().filter(|k| k.table == table) {
            let default = if k.is_switch() {
                "false".to_owned()
            } else {
                let values: Vec<_> = k
                    .arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                if values.is_empty() {
                    "none".to_owned()
                } else {
                    values.join(",")
                }
            };
            let help = k
                .arg
                .get_help()
                .map(|h| {
                    h.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
                .replace('|', "\\|");
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {default} | {help} |",
                k.name,
                k.flag()
            );
        }
        out.push('\n');
    }
    out
}

#[test]
fn docs_config_md_lists_every_key_with_its_flag_and_default() {
    let doc = include_str!("../../docs/config.md");
    let begin = "<!-- keys: generated from the parser; checked by config::tests -->\n\n";
    let end = "<!-- end of keys -->";
    let from = doc.find(begin).expect("the keys' start marker") + begin.len();
    let to = doc.find(end).expect("the keys' end marker");
    let want = reference();
    assert!(
        doc[from..to] == want,
        "docs/config.md's key tables differ from the parser's keys; they should read:\n\n{want}"
    );
}

#[test]
fn without_removes_a_repeatable_flags_values_only() {
    let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--sink", "a", "--tls", "--sink", "b"], &["--tls"]),
        (&["--port", "80", "--tls"], &["--port", "80", "--tls"]),
        (&[], &[]),
    ];
    for (settings, want) in cases {
        assert_eq!(without(os(settings), "--sink"), os(want), "{settings:?}");
    }
}
