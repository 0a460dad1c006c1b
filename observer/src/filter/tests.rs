//! The language on records built by the detectors' test helpers, its exact errors, and the
//! lists docs/filters.md, docs/anomalies.md and the schema must agree with.

use std::sync::Arc;

use observer_common::{CloseInfo, ConnState, tcp_state};

use super::{CONN_STATES, Dataset, Filter, Key, RULES, TCP_STATES};
use crate::{
    detect::{
        Alert, Config, Status, Subject, connect_failures,
        socket_tests::handshake,
        tests::{NETNS, Step, failed, none, only, process, reset, run},
    },
    track::{
        lifecycle::{LateResets, Lifecycle, state_name},
        procs::Cgroup,
        record::{Output, Role, StateRecord},
    },
};

const CONTAINER: &str = "3f2a9c1b0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
const HOST_NETNS: u32 = 4_026_531_840;

/// A lifecycle from `first` through `steps`, a second apart.
fn life(first: u8, steps: &[u8]) -> Lifecycle {
    let mut st = ConnState::zeroed();
    st.first_state = first;
    for (i, &state) in steps.iter().enumerate() {
        st.states[i] = state;
        st.ts[i] = (i as u64 + 1) * 1_000_000_000;
    }
    st.n_transitions = u8::try_from(steps.len()).expect("few");
    Lifecycle::derive(&st, &CloseInfo::default(), LateResets::default())
}

fn conn(o: Output, edit: impl FnOnce(&mut crate::track::record::ConnRecord)) -> Output {
    let Output::Connection(mut c) = o else {
        unreachable!()
    };
    edit(&mut c);
    Output::Connection(c)
}

/// What each name stands for: the pipeline's records, alerts, and the observer's own lines.
#[expect(clippy::large_enum_variant, reason = "nine lines, built once per test")]
enum Line {
    Record(Output),
    Alert(Alert),
    Own(Dataset),
}

fn lines() -> Vec<(&'static str, Line)> {
    use Step::R;
    use tcp_state::{
        CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV, SYN_SENT,
    };
    // curl (pid 300) of 10.0.0.1:50000 refused by 10.0.0.9:443.
    let refused = conn(failed(0, 1, 443, "refused", "REJ"), |c| {
        c.lifecycle = life(CLOSE, &[SYN_SENT, CLOSE]);
    });
    // nginx (pid 100) served 10.0.0.1:50001 on 10.0.0.9:8080 over TLS, from its unit.
    let server = conn(reset(1, 2, Role::Server, 8080, 1, 0), |c| {
        c.process = Some(process(100, "nginx"));
        c.lifecycle = life(
            LISTEN,
            &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
        );
        c.cgroup = Some(Cgroup {
            path: Arc::from("/system.slice/nginx.service"),
            container_id: None,
        });
        c.tls = Some(Box::new(crate::tls::TlsFacts {
            server_name: Some("Shop.Test".to_owned()),
            ..crate::tls::TlsFacts::default()
        }));
    });
    // psql (pid 777) in a container, over IPv6, found open, closed into TIME_WAIT.
    let container = conn(failed(2, 3, 5432, "fin", "SF"), |c| {
        c.process = Some(process(777, "psql"));
        c.netns = HOST_NETNS;
        c.ipv6 = true;
        c.source.ip = "fd00::2".parse().expect("ip");
        c.source.port = 40_000;
        c.destination.ip = "fd00::5".parse().expect("ip");
        c.pre_existing = true;
        c.lifecycle = life(ESTABLISHED, &[FIN_WAIT1, FIN_WAIT2, CLOSE]);
        c.cgroup = Some(Cgroup {
            path: Arc::from(format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CONTAINER}.scope"
            )),
            container_id: Some(Arc::from(CONTAINER)),
        });
    });
    let state = Output::State(StateRecord {
        uid: crate::detect::tests::uid(1),
        ts_ns: 2_000_000_000,
        old_state: ESTABLISHED,
        new_state: CLOSE_WAIT,
        role: Role::Server,
        netns: NETNS,
        ipv6: false,
        local: ("10.0.0.9".parse().expect("ip"), 8080),
        remote: ("10.0.0.1".parse().expect("ip"), 50_001),
    });
    // nginx (pid 400) on 10.0.0.9:443 failed a handshake for shop.test with 10.0.0.1:50004.
    let tls = handshake(4, 5, true, false);
    let loss = Output::Loss(crate::track::record::LossRecord {
        ts_ns: 0,
        delta: crate::track::record::Losses::default(),
        total: crate::track::record::Losses::default(),
        events: 0,
        summary: true,
        sinks: Vec::new(),
    });
    // Three refused connects of curl to 10.0.0.9:443 fire `connect_failures`.
    let mut d = only(Config {
        connect_failures: Some(connect_failures::Config {
            count: 3,
            window_s: 10,
        }),
        ..none()
    });
    let alerts = run(
        &mut d,
        (0..3)
            .map(|n| R(failed(n, 1 + u64::from(n), 443, "refused", "REJ")))
            .collect(),
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = alerts[0].clone();
    // A remote host's (port 0) resolved storm, with no process.
    let mut host = alert.clone();
    host.rule = "rst_storm";
    host.status = Status::Resolved;
    host.subject = Subject {
        netns: Some(NETNS),
        process: None,
        destination: Some(("10.0.0.7".parse().expect("ip"), 0)),
    };
    vec![
        ("refused", Line::Record(refused)),
        ("server", Line::Record(server)),
        ("container", Line::Record(container)),
        ("state", Line::Record(state)),
        ("tls", Line::Record(tls)),
        ("loss", Line::Record(loss)),
        ("alert", Line::Alert(alert)),
        ("host", Line::Alert(host)),
        ("agent", Line::Own(Dataset::Agent)),
    ]
}

fn admitted(f: &Filter, lines: &[(&'static str, Line)]) -> Vec<&'static str> {
    lines
        .iter()
        .filter(|(_, line)| match line {
            Line::Record(o) => f.admits_output(o),
            Line::Alert(a) => f.admits_alert(a),
            Line::Own(d) => f.admits_own(*d),
        })
        .map(|(name, _)| *name)
        .collect()
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn terms_on_records_alerts_and_own_lines() {
    let lines = lines();
    let all = [
        "refused",
        "container",
        "server",
        "state",
        "tls",
        "loss",
        "alert",
        "host",
        "agent",
    ];
    let short_id = &CONTAINER[..12];
    let cases: Vec<(String, Vec<&str>)> = [
        ("", all.to_vec()),
        ("   ", all.to_vec()),
        // Ports: either end, the originator's, the responder's; alternatives; negation.
        ("port:443", vec!["refused", "tls", "loss", "alert", "agent"]),
        ("dport:8080", vec!["server", "state", "loss", "agent"]),
        ("sport:50001", vec!["server", "state", "loss", "agent"]),
        ("sport:443", vec!["loss", "agent"]),
        (
            "port:80,443",
            vec!["refused", "tls", "loss", "alert", "agent"],
        ),
        (
            "!port:443",
            vec!["server", "container", "state", "loss", "host", "agent"],
        ),
        ("pid:300", vec!["refused", "loss", "alert", "agent"]),
        ("comm:NGINX", vec!["server", "tls", "loss", "agent"]),
        (
            "comm:curl,psql",
            vec!["refused", "container", "loss", "alert", "agent"],
        ),
        // States entered; a found socket's first state; ss's spelling; alerts' status.
        ("state:estab", vec!["server", "container", "loss", "agent"]),
        ("state:close-wait", vec!["server", "state", "loss", "agent"]),
        ("state:CLOSE_WAIT", vec!["server", "state", "loss", "agent"]),
        ("state:time_wait", vec!["container", "loss", "agent"]),
        ("state:listen", vec!["loss", "agent"]),
        ("state:firing", vec!["loss", "alert", "agent"]),
        ("state:resolved", vec!["loss", "host", "agent"]),
        // Addresses: an IP, an IP and port, CIDR blocks of both families.
        (
            "addr:10.0.0.9",
            vec![
                "refused", "server", "state", "tls", "loss", "alert", "agent",
            ],
        ),
        (
            "addr:10.0.0.9:8080",
            vec!["server", "state", "loss", "agent"],
        ),
        (
            "addr:10.0.0.0/29",
            vec!["refused", "server", "state", "tls", "loss", "host", "agent"],
        ),
        ("addr:fd00::/16", vec!["container", "loss", "agent"]),
        ("addr:[fd00::5]:5432", vec!["container", "loss", "agent"]),
        ("addr:10.0.0.90", vec!["loss", "agent"]),
        // Cgroups: a path prefix by whole components, or a substring.
        ("cgroup:/system.slice", vec!["server", "loss", "agent"]),
        ("cgroup:/system", vec!["loss", "agent"]),
        (
            "cgroup:/kubepods.slice/",
            vec!["container", "loss", "agent"],
        ),
        ("cgroup:NGINX.service", vec!["server", "loss", "agent"]),
        (
            "!cgroup:/system.slice",
            vec![
                "refused",
                "container",
                "state",
                "tls",
                "loss",
                "alert",
                "host",
                "agent",
            ],
        ),
        // Datasets, which alone reach the observer's own lines.
        (
            "dataset:observer.connection",
            vec!["refused", "server", "container"],
        ),
        ("dataset:tls,ANOMALY", vec!["tls", "alert", "host"]),
        ("dataset:loss", vec!["loss"]),
        ("dataset:agent,observer.state", vec!["state", "agent"]),
        (
            "!dataset:observer.loss",
            vec![
                "refused",
                "server",
                "container",
                "state",
                "tls",
                "alert",
                "host",
                "agent",
            ],
        ),
        ("sni:shop", vec!["server", "tls", "loss", "agent"]),
        (
            "role:server",
            vec!["server", "state", "tls", "loss", "agent"],
        ),
        ("role:client", vec!["refused", "container", "loss", "agent"]),
        ("netns:4026531840", vec!["container", "loss", "agent"]),
        (
            "netns:4026532000",
            vec![
                "refused", "server", "state", "tls", "loss", "alert", "host", "agent",
            ],
        ),
        ("conn_state:rej", vec!["refused", "loss", "agent"]),
        (
            "conn_state:RSTR,SF",
            vec!["server", "container", "loss", "agent"],
        ),
        ("rule:connect_failures", vec!["loss", "alert", "agent"]),
        (
            "!rule:connect_failures",
            vec![
                "refused",
                "server",
                "container",
                "state",
                "tls",
                "loss",
                "host",
                "agent",
            ],
        ),
        // Bare words: pid, name, state, address text, server name, rule.
        ("curl", vec!["refused", "loss", "alert", "agent"]),
        ("443", vec!["refused", "tls", "loss", "alert", "agent"]),
        ("777", vec!["container", "loss", "agent"]),
        ("storm", vec!["loss", "host", "agent"]),
        ("fd00::5", vec!["container", "loss", "agent"]),
        ("nginx 8080", vec!["server", "loss", "agent"]),
        (
            "!curl",
            vec![
                "server",
                "container",
                "state",
                "tls",
                "loss",
                "host",
                "agent",
            ],
        ),
        // Terms together.
        (
            "dport:443 comm:curl",
            vec!["refused", "loss", "alert", "agent"],
        ),
        ("dataset:connection !role:client", vec!["server"]),
    ]
    .into_iter()
    .map(|(text, want)| (text.to_owned(), want))
    .chain([
        (
            format!("container:{short_id}"),
            vec!["container", "loss", "agent"],
        ),
        (
            format!("container:{CONTAINER}"),
            vec!["container", "loss", "agent"],
        ),
        (
            format!("container:{}", &CONTAINER[1..13]),
            vec!["loss", "agent"],
        ),
    ])
    .collect();
    for (text, want) in &cases {
        let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let mut want = want.clone();
        want.sort_unstable();
        let mut got = admitted(&f, &lines);
        got.sort_unstable();
        assert_eq!(got, want, "filter {text:?}");
        // Read leniently, a valid expression means the same.
        let mut lenient = admitted(&Filter::lenient(text), &lines);
        lenient.sort_unstable();
        assert_eq!(lenient, want, "lenient {text:?}");
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn errors_say_what_is_wrong_where_and_what_is_valid() {
    let keys = "port, sport, dport, pid, comm, state, addr, cgroup, container, dataset, sni, \
                role, netns, conn_state, rule";
    let cases = [
        (
            "dprot:443",
            format!("unknown key `dprot` at column 1: the keys are {keys}"),
        ),
        (
            "comm:x !PORT:1",
            format!("unknown key `PORT` at column 9: the keys are {keys}"),
        ),
        (
            "comm:nginx port:",
            "`port:` at column 12 has no value: write one, e.g. `port:443`".to_owned(),
        ),
        (
            "port:80,99999",
            "port value `99999` at column 9 is not valid: a port is a number from 0 to 65535"
                .to_owned(),
        ),
        (
            "comm:é port:x",
            "port value `x` at column 13 is not valid: a port is a number from 0 to 65535"
                .to_owned(),
        ),
        (
            "port:80,,443",
            "empty alternative at column 9 in `port:80,,443`: separate values with single \
             commas, e.g. `port:80,443`"
                .to_owned(),
        ),
        (
            "nginx,",
            "empty alternative at column 7 in `nginx,`: separate values with single commas, \
             e.g. `port:80,443`"
                .to_owned(),
        ),
        (
            "nginx  !",
            "`!` at column 8 negates nothing: write it right before a term, e.g. `!port:22`"
                .to_owned(),
        ),
        (
            "pid:+1",
            "pid value `+1` at column 5 is not valid: a process id is a number, e.g. pid:1234"
                .to_owned(),
        ),
        (
            "netns:net:[4026531840]",
            "netns value `net:[4026531840]` at column 7 is not valid: a network namespace is \
             its inode number, as `readlink /proc/PID/ns/net` shows it, e.g. netns:4026531840"
                .to_owned(),
        ),
        (
            "addr:10.0.0.256",
            "addr value `10.0.0.256` at column 6 is not valid: an address is an IP (10.0.0.1, \
             ::1), an IP and port (10.0.0.1:443, [::1]:443) or a CIDR block (10.0.0.0/8, \
             fd00::/8)"
                .to_owned(),
        ),
        (
            "addr:10.0.0.0/33",
            "addr value `10.0.0.0/33` at column 6 is not valid: an address is an IP (10.0.0.1, \
             ::1), an IP and port (10.0.0.1:443, [::1]:443) or a CIDR block (10.0.0.0/8, \
             fd00::/8)"
                .to_owned(),
        ),
        (
            "state:establised",
            "state value `establised` at column 7 is not valid: no state's name contains it: \
             the TCP states are ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, \
             TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV (or as ss \
             spells them: estab, close-wait, …) and an alert's are firing, resolved"
                .to_owned(),
        ),
        (
            "container:web1",
            "container value `web1` at column 11 is not valid: a container id is hexadecimal: \
             its first digits (docker shows 12) or all 64"
                .to_owned(),
        ),
        (
            "dataset:observer.snapshot",
            "dataset value `observer.snapshot` at column 9 is not valid: the datasets are \
             observer.connection, observer.state, observer.tls, observer.anomaly, \
             observer.loss, observer.agent (`observer.` may be left out)"
                .to_owned(),
        ),
        (
            "role:client,peer",
            "role value `peer` at column 13 is not valid: a role is client, server or unknown"
                .to_owned(),
        ),
        (
            "conn_state:SH",
            "conn_state value `SH` at column 12 is not valid: Zeek's conn_state is one of S0, \
             S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, OTH"
                .to_owned(),
        ),
        (
            "rule:syn_flod",
            "rule value `syn_flod` at column 6 is not valid: the anomaly rules are \
             accept_queue_overflow, close_wait_stuck, connect_failures, event_loss, \
             fin_wait_2_stuck, retransmit_storm, rst_storm, syn_flood, time_wait_pressure, \
             tls_handshake_failures"
                .to_owned(),
        ),
    ];
    for (text, want) in &cases {
        let got = Filter::parse(text).map(|f| f.to_string());
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err(want.clone()),
            "{text:?}"
        );
    }
    // Colons that do not follow a key are text: addresses as bare words.
    for text in ["10.0.0.1:443", "[::1]:443", "::1", "beef::1", "fe80::1"] {
        let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(f.to_string(), text);
        assert!(!f.is_empty());
    }
}

#[test]
fn read_leniently_as_typed() {
    let lines = lines();
    let pick = |text: &str| {
        let mut got = admitted(&Filter::lenient(text), &lines);
        got.sort_unstable();
        got
    };
    let own = ["agent", "loss"];
    let cases: [(&str, &[&str]); 11] = [
        // A number key without a number matches nothing; a text key's empty value, all.
        ("port:", &own),
        ("port:44x", &own),
        (
            "port:443,",
            &["agent", "alert", "loss", "refused", "tls"][..],
        ),
        (
            "comm:",
            &[
                "agent",
                "alert",
                "container",
                "loss",
                "refused",
                "server",
                "tls",
            ],
        ),
        // Unknown keys are words; a lone `!` is the word `!`.
        ("dprot:443", &own),
        ("!", &own),
        // Partial values match as text.
        (
            "addr:10.0.0",
            &[
                "agent", "alert", "host", "loss", "refused", "server", "state", "tls",
            ],
        ),
        ("addr:fd00", &["agent", "container", "loss"]),
        (
            "state:",
            &[
                "agent",
                "alert",
                "container",
                "host",
                "loss",
                "refused",
                "server",
                "state",
            ],
        ),
        ("role:serv", &["agent", "loss", "server", "state", "tls"]),
        ("dataset:observer.con", &["container", "refused", "server"]),
    ];
    for (text, want) in cases {
        assert_eq!(pick(text), want, "lenient {text:?}");
        assert!(Filter::parse(text).is_err(), "{text:?} is not valid");
    }
    assert!(Filter::lenient("").is_empty());
    assert!(Filter::lenient(" \t ").is_empty());
    assert_eq!(
        Filter::lenient("comm:x  port:").to_string(),
        "comm:x  port:"
    );
}

#[test]
fn datasets_name_their_lines() {
    let names: Vec<&str> = Dataset::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        [
            "observer.connection",
            "observer.state",
            "observer.tls",
            "observer.anomaly",
            "observer.loss",
            "observer.agent"
        ]
    );
    let schemas = [
        include_str!("../../../docs/schema/connection.json"),
        include_str!("../../../docs/schema/state.json"),
        include_str!("../../../docs/schema/tls.json"),
        include_str!("../../../docs/schema/anomaly.json"),
        include_str!("../../../docs/schema/loss.json"),
        include_str!("../../../docs/schema/agent.json"),
    ];
    for (d, schema) in Dataset::ALL.iter().zip(schemas) {
        assert!(schema.contains(&format!("\"{}\"", d.name())), "{d:?}");
    }
    let of: Vec<(&str, Dataset)> = lines()
        .into_iter()
        .filter_map(|(name, line)| match line {
            Line::Record(o) => Some((name, Dataset::of(&o))),
            _ => None,
        })
        .collect();
    assert_eq!(
        of,
        [
            ("refused", Dataset::Connection),
            ("server", Dataset::Connection),
            ("container", Dataset::Connection),
            ("state", Dataset::State),
            ("tls", Dataset::Tls),
            ("loss", Dataset::Loss),
        ]
    );
}

#[test]
fn value_lists_match_the_code_and_the_docs() {
    // The kernel's names, and `ss`'s as `top` always derived them.
    for (i, (name, ss)) in TCP_STATES[..12].iter().enumerate() {
        assert_eq!(*name, state_name(u8::try_from(i + 1).expect("small")));
        let derived = name
            .to_ascii_lowercase()
            .replace('_', "-")
            .replace("established", "estab");
        assert_eq!(*ss, derived);
    }
    assert_eq!(TCP_STATES[12], ("UNKNOWN", "unknown"));
    // The rules docs/anomalies.md describes.
    let doc = include_str!("../../../docs/anomalies.md");
    let mut rules: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split_once('`').map(|(id, _)| id))
        .collect();
    rules.sort_unstable();
    assert_eq!(rules, RULES);
    // The conn_states the schema allows.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/schema/connection.json")).expect("json");
    let states = &schema["properties"]["conn"]["properties"]["state"]["enum"];
    assert_eq!(*states, serde_json::json!(CONN_STATES));
}

/// The keys table of docs/filters.md: (key, example) per row.
fn documented_keys() -> Vec<(String, String)> {
    let doc = include_str!("../../../docs/filters.md");
    let begin = "<!-- keys: checked against the parser by filter::tests -->\n";
    let from = doc.find(begin).expect("the keys' start marker") + begin.len();
    let to = from
        + doc[from..]
            .find("<!-- end of keys -->")
            .expect("the keys' end marker");
    doc[from..to]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let unquote = |c: &str| {
                c.trim_matches(|ch| ch == '|' || ch == ' ' || ch == '`')
                    .to_owned()
            };
            (unquote(cells[0]), unquote(cells[cells.len() - 1]))
        })
        .collect()
}

#[test]
fn docs_filters_md_documents_every_key_and_no_other() {
    let documented = documented_keys();
    let names: Vec<&str> = documented.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        Key::ALL.map(Key::name),
        "docs/filters.md's keys table"
    );
    for (key, example) in &documented {
        // Each row's example is a valid term of its key.
        assert!(
            example.starts_with(&format!("{key}:")) || example.starts_with(&format!("!{key}:")),
            "{key}: {example}"
        );
        Filter::parse(example).unwrap_or_else(|e| panic!("{example}: {e}"));
    }
    for key in Key::ALL {
        Filter::parse(key.example()).unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
}
