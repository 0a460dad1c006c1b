//! `observer top`'s views rendered into ratatui's `TestBackend` from a stream recorded from the
//! real kernel (tests/data/top/README.md), replayed through the same pipeline, detectors and
//! read model as the live screen (`app::top::replay`), and compared as exact text with the
//! frames in tests/data/top/*.txt. `OBSERVER_BLESS=1` rewrites those files after a deliberate
//! change; review the diff.

use std::path::PathBuf;

use clap::Parser as _;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use observer::{
    app::top::{replay, thresholds},
    cli::{Cli, Command},
    decode::Event,
    facts::{
        Fact,
        listeners::{ListenPort, ListenerSample},
    },
    recording::Replay,
    top::{
        input::{Tab, Ui},
        listeners,
        model::Model,
        select::{self, Filter},
        view,
    },
    track::{record::Uid, uid_of},
};
use ratatui::{Terminal, backend::TestBackend};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/top")
        .join(name)
}

/// The model at the recording's last listing, with the thresholds it was recorded with.
fn model() -> Model {
    let cli = Cli::try_parse_from([
        "observer",
        "top",
        "--close-wait-after",
        "1",
        "--connect-failures",
        "3",
        "--connect-failures-window",
        "2",
    ])
    .expect("flags");
    let Some(Command::Top(args)) = cli.command else {
        panic!("not top");
    };
    replay(&data("top.rec"), &thresholds(&args)).expect("the recording replays")
}

fn render(model: &Model, ui: &mut Ui, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    terminal.draw(|f| view::draw(f, model, ui)).expect("draw");
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Compares a frame with its file (or writes it, with `OBSERVER_BLESS=1`).
fn check(name: &str, got: &str) {
    let path = data(&format!("{name}.txt"));
    if std::env::var_os("OBSERVER_BLESS").is_some() {
        std::fs::write(&path, got).expect("bless");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("expected frame");
    assert!(
        got == want,
        "frame {name} differs from {}:\n--- got\n{got}--- want\n{want}",
        path.display()
    );
}

fn press(ui: &mut Ui, code: KeyCode) {
    ui.key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn type_filter(ui: &mut Ui, text: &str) {
    press(ui, KeyCode::Char('/'));
    for c in text.chars() {
        press(ui, KeyCode::Char(c));
    }
    press(ui, KeyCode::Enter);
}

/// (comm, local port, remote port, state) of a row.
type Shown = (String, u16, u16, String);

/// The rows `text` admits, in `col` order.
fn pick(m: &Model, text: &str, col: usize, reverse: bool) -> Vec<Shown> {
    select::conns(&m.conns, &Filter::parse(text), col, reverse)
        .iter()
        .map(|c| {
            (
                c.comm.clone(),
                c.local.port(),
                c.remote.port(),
                c.state_name().to_owned(),
            )
        })
        .collect()
}

fn row(comm: &str, local: u16, remote: u16, state: &str) -> Shown {
    (comm.to_owned(), local, remote, state.to_owned())
}

// The recording's ports (tests/data/top/README.md): the listeners, and the clients' ends.
const DB: u16 = 45817;
const LEAKY: u16 = 50335;
const TLS: u16 = 53219;
const STALLED: u16 = 33645;
const WEB: u16 = 39521;
const APP_TO_DB: u16 = 49434;
const APP_TO_LEAKY: u16 = 37786;
const TLS_CLI: u16 = 54314;
const CROWD: [u16; 2] = [48910, 48926];
/// spoofer's source ports, from 198.51.100.1, .2 and .3 to web.
const SPOOFED: [u16; 3] = [40000, 40001, 40002];

#[test]
fn the_recorded_stream_fills_every_column() {
    let m = model();
    assert_eq!(m.host, "vm");
    // Every socket of the namespace at the last listing, by state then local address: five
    // listeners; four connections with both ends (crowd's server ends wait in stalled's accept
    // queue: no process has them); the leak in CLOSE_WAIT, and app's end of it in FIN_WAIT2,
    // orphaned (app closed it: no process holds it); spoofer's three half-open requests to web.
    // churn's connections were all gone (reset).
    let all = pick(&m, "", 4, false);
    assert_eq!(
        all,
        [
            row("leaky", LEAKY, APP_TO_LEAKY, "CLOSE_WAIT"),
            row("", STALLED, CROWD[0], "ESTABLISHED"),
            row("", STALLED, CROWD[1], "ESTABLISHED"),
            row("db", DB, APP_TO_DB, "ESTABLISHED"),
            row("crowd", CROWD[0], STALLED, "ESTABLISHED"),
            row("crowd", CROWD[1], STALLED, "ESTABLISHED"),
            row("app", APP_TO_DB, DB, "ESTABLISHED"),
            row("tls-srv", TLS, TLS_CLI, "ESTABLISHED"),
            row("tls-cli", TLS_CLI, TLS, "ESTABLISHED"),
            row("", APP_TO_LEAKY, LEAKY, "FIN_WAIT2"),
            row("stalled", STALLED, 0, "LISTEN"),
            row("db", DB, 0, "LISTEN"),
            row("leaky", LEAKY, 0, "LISTEN"),
            row("tls-srv", TLS, 0, "LISTEN"),
            row("web", WEB, 0, "LISTEN"),
            row("", WEB, SPOOFED[0], "SYN_RECV"),
            row("", WEB, SPOOFED[1], "SYN_RECV"),
            row("", WEB, SPOOFED[2], "SYN_RECV"),
        ]
    );
    let tls: Vec<(u16, Option<&str>, Option<&str>)> = m
        .conns
        .iter()
        .filter(|c| c.tls.is_some())
        .map(|c| (c.local.port(), c.tls_version(), c.sni()))
        .collect();
    assert_eq!(
        tls,
        [
            (TLS, Some("1.3"), Some("tls.test")),
            (TLS_CLI, Some("1.3"), Some("tls.test"))
        ]
    );
    let alerts: Vec<(&str, bool, &str)> = m
        .anomalies
        .iter()
        .map(|a| {
            (
                a.alert.rule,
                a.firing(),
                a.alert.subject.process.as_ref().map_or("-", |p| p.name()),
            )
        })
        .collect();
    assert_eq!(
        alerts,
        [
            ("connect_failures", false, "app"),
            ("accept_queue_overflow", true, "stalled"),
            ("close_wait_stuck", true, "leaky")
        ]
    );
    assert_eq!(m.firing(), 2);
}

#[test]
fn every_view_renders_the_recorded_stream() {
    let m = model();
    let mut ui = Ui::default();
    check("connections", &render(&m, &mut ui, 160, 24));

    press(&mut ui, KeyCode::Char('2'));
    assert_eq!(ui.tab, Tab::Processes);
    check("processes", &render(&m, &mut ui, 110, 16));

    press(&mut ui, KeyCode::Char('3'));
    assert_eq!(ui.tab, Tab::Anomalies);
    check("anomalies", &render(&m, &mut ui, 160, 18));
    // The resolved alert's pane: its reason and evidence at resolution.
    type_filter(&mut ui, "state:resolved");
    check("anomalies-resolved", &render(&m, &mut ui, 160, 18));
    // stalled's full accept queue: the connections waiting in it, by uid.
    press(&mut ui, KeyCode::Esc);
    type_filter(&mut ui, "comm:stalled");
    check("anomalies-accept-queue", &render(&m, &mut ui, 160, 22));

    // The detail pane of the TLS client's connection.
    press(&mut ui, KeyCode::Char('1'));
    press(&mut ui, KeyCode::Esc);
    type_filter(&mut ui, "comm:tls-cli");
    press(&mut ui, KeyCode::Enter);
    check("detail", &render(&m, &mut ui, 160, 22));
}

#[test]
fn sorting_is_shown_and_reversible_on_the_recorded_stream() {
    let m = model();
    let mut ui = Ui::default();
    // Three columns right of STATE: RX (bytes received), then reversed: most first.
    for _ in 0..3 {
        press(&mut ui, KeyCode::Char('>'));
    }
    press(&mut ui, KeyCode::Char('r'));
    assert_eq!(ui.sort(), (7, true));
    let frame = render(&m, &mut ui, 160, 14);
    assert!(
        frame.contains("sort: RX desc") && frame.contains("RX▼"),
        "{frame}"
    );
    check("connections-by-rx", &frame);
    let (col, rev) = ui.sort();
    let first: Vec<Shown> = pick(&m, "", col, rev).into_iter().take(2).collect();
    // app received db's 20000 bytes; db received app's 5000.
    assert_eq!(
        first,
        [
            row("app", APP_TO_DB, DB, "ESTABLISHED"),
            row("db", DB, APP_TO_DB, "ESTABLISHED")
        ]
    );
    press(&mut ui, KeyCode::Char('r'));
    let frame = render(&m, &mut ui, 160, 14);
    assert!(
        frame.contains("sort: RX asc") && frame.contains("RX▲"),
        "{frame}"
    );
}

#[test]
fn filter_expressions_on_the_recorded_stream() {
    let m = model();
    let leaky_pid = m
        .conns
        .iter()
        .find(|c| c.comm == "leaky")
        .and_then(|c| c.pid)
        .expect("leaky's pid");
    let cases: Vec<(String, Vec<Shown>)> = vec![
        (
            format!("port:{DB}"),
            vec![
                row("db", DB, APP_TO_DB, "ESTABLISHED"),
                row("app", APP_TO_DB, DB, "ESTABLISHED"),
                row("db", DB, 0, "LISTEN"),
            ],
        ),
        (
            format!("sport:{DB}"),
            vec![
                row("db", DB, APP_TO_DB, "ESTABLISHED"),
                row("db", DB, 0, "LISTEN"),
            ],
        ),
        (
            format!("dport:{TLS}"),
            vec![row("tls-cli", TLS_CLI, TLS, "ESTABLISHED")],
        ),
        (
            format!("pid:{leaky_pid}"),
            vec![
                row("leaky", LEAKY, APP_TO_LEAKY, "CLOSE_WAIT"),
                row("leaky", LEAKY, 0, "LISTEN"),
            ],
        ),
        (
            "comm:tls".to_owned(),
            vec![
                row("tls-srv", TLS, TLS_CLI, "ESTABLISHED"),
                row("tls-cli", TLS_CLI, TLS, "ESTABLISHED"),
                row("tls-srv", TLS, 0, "LISTEN"),
            ],
        ),
        (
            "state:close-wait".to_owned(),
            vec![row("leaky", LEAKY, APP_TO_LEAKY, "CLOSE_WAIT")],
        ),
        (
            "state:listen comm:db".to_owned(),
            vec![row("db", DB, 0, "LISTEN")],
        ),
        (
            format!("addr:127.0.0.1:{TLS_CLI}"),
            vec![
                row("tls-srv", TLS, TLS_CLI, "ESTABLISHED"),
                row("tls-cli", TLS_CLI, TLS, "ESTABLISHED"),
            ],
        ),
        (
            "tls.test estab".to_owned(),
            vec![
                row("tls-srv", TLS, TLS_CLI, "ESTABLISHED"),
                row("tls-cli", TLS_CLI, TLS, "ESTABLISHED"),
            ],
        ),
        ("comm:nobody".to_owned(), vec![]),
    ];
    for (text, want) in &cases {
        assert_eq!(pick(&m, text, 4, false), *want, "filter {text:?}");
    }
    let mut ui = Ui::default();
    type_filter(&mut ui, &format!("port:{DB}"));
    check("connections-port-filter", &render(&m, &mut ui, 160, 10));
    // The Anomalies view filters by subject.
    let rules = |text: &str| -> Vec<&str> {
        select::anomalies(&m.anomalies, &Filter::parse(text), 0, false)
            .iter()
            .map(|a| a.alert.rule)
            .collect()
    };
    assert_eq!(rules(&format!("pid:{leaky_pid}")), ["close_wait_stuck"]);
    assert_eq!(rules("comm:app"), ["connect_failures"]);
    assert_eq!(rules("comm:stalled"), ["accept_queue_overflow"]);
    assert_eq!(
        rules("state:firing"),
        ["close_wait_stuck", "accept_queue_overflow"]
    );
}

/// A Listeners row as the view shows it: (comm, port, queue, backlog, SYN/s, half-open,
/// handshakes/s, overflows/s).
type ListenerShown = (String, u16, u32, u32, String, u32, String, String);

/// A row of the recording's namespace, whose overflows were 10 in the last 0.9908 s, all of
/// them stalled's (the one full queue).
fn lrow(
    comm: &str,
    port: u16,
    (queue, backlog): (u32, u32),
    syns: &str,
    half_open: u32,
    handshakes: &str,
) -> ListenerShown {
    let overflows = if comm == "stalled" { "10.1" } else { "0.0" };
    (
        comm.to_owned(),
        port,
        queue,
        backlog,
        syns.to_owned(),
        half_open,
        handshakes.to_owned(),
        overflows.to_owned(),
    )
}

fn per_s(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// The Listeners rows `text` admits, in `col` order.
fn pick_listeners(m: &Model, text: &str, col: usize, reverse: bool) -> Vec<ListenerShown> {
    listeners::sorted(&m.listeners, &Filter::parse(text), col, reverse)
        .iter()
        .map(|l| {
            (
                l.comm.clone(),
                l.local.port(),
                l.queue,
                l.backlog,
                per_s(l.syn_rate),
                l.half_open,
                per_s(l.handshake_rate),
                per_s(l.overflow_rate),
            )
        })
        .collect()
}

/// The recording's boot id, and its listener samples in order.
fn samples() -> ([u8; 16], Vec<ListenerSample>) {
    let (header, mut input) = Replay::open(&data("top.rec")).expect("the recording opens");
    let mut out = Vec::new();
    while let Some(event) = input.next_event().expect("an event") {
        if let Event::Fact(f) = event
            && let Fact::Listeners(s) = *f
        {
            out.push(s);
        }
    }
    (header.boot_id_bytes(), out)
}

#[test]
fn the_recorded_listener_samples_count_what_the_fixture_did() {
    let (boot_id, all) = samples();
    let last = all.last().expect("listener samples were recorded");
    assert!(last.counted, "SYN and ACK counts from listener_counts");
    let port = |p: u16| {
        last.ports
            .iter()
            .find(|l| l.port == p)
            .unwrap_or_else(|| panic!("listener {p}"))
    };
    let stalled = port(STALLED);
    // backlog 1: the kernel queues backlog + 1 connections, crowd's two, never accepted.
    let queue: Vec<(u32, u32)> = stalled
        .sockets
        .iter()
        .map(|s| (s.queue, s.backlog))
        .collect();
    assert_eq!(queue, [(2, 1)]);
    // What waits in it is crowd's connections (their server ends, which no process holds), as
    // the accept_queue_overflow alert names them.
    let m = model();
    let waiting: Vec<u64> = m
        .conns
        .iter()
        .filter(|c| c.local.port() == STALLED && c.state_name() == "ESTABLISHED")
        .map(|c| c.cookie)
        .collect();
    assert_eq!(waiting.len(), 2);
    assert_eq!(stalled.sockets[0].queued, waiting);
    let alert = m
        .anomalies
        .iter()
        .find(|a| a.alert.rule == "accept_queue_overflow")
        .expect("stalled's alert");
    let uids: Vec<Uid> = waiting.iter().map(|&c| uid_of(&boot_id, c)).collect();
    assert_eq!(alert.alert.samples, uids);
    // Every SYN that reached stalled after crowd's found its queue full and was dropped: the
    // namespace's only listen overflows, and its only listen drops.
    // By the last sample: crowd's 2 handshakes and spoofer's 50 SYNs (10 a second for 5 s).
    let ns = last.netns(stalled.netns).expect("the namespace's counters");
    assert_eq!((stalled.syns, stalled.handshakes), (Some(52), Some(2)));
    assert_eq!((ns.listen_overflows, ns.listen_drops), (50, 50));
    assert_eq!(stalled.half_open, 0);
    // web: churn's 10 connections, and spoofer's 3 SYNs whose SYN-ACKs went nowhere, each
    // sent again after 1 s and 3 s.
    let web = port(WEB);
    assert_eq!((web.syns, web.handshakes), (Some(13), Some(10)));
    assert_eq!((web.half_open, web.synack_retrans), (3, 6));
    // The Listeners view's rates are over the last two samples: 0.9908 s apart, in which
    // stalled got 10 SYNs (all overflowed) and web 2.
    let prev = &all[all.len() - 2];
    assert_eq!(last.ts_ns - prev.ts_ns, 990_805_851);
    let before = |p: u16| prev.ports.iter().find(|l| l.port == p).expect("listener");
    assert_eq!(before(STALLED).syns, Some(42));
    assert_eq!(
        prev.netns(stalled.netns).map(|n| n.listen_overflows),
        Some(40)
    );
    assert_eq!(
        (before(WEB).syns, before(WEB).handshakes),
        (Some(11), Some(8))
    );
    // Where the last second's SYNs came from: spoofer's to stalled; churn's (from web's own
    // address) to web, beside spoofer's half-open requests.
    let sources = |l: &ListenPort| -> Vec<(String, u64, u32)> {
        l.sources
            .iter()
            .map(|s| (s.prefix.clone(), s.syns, s.half_open))
            .collect()
    };
    assert_eq!(sources(stalled), [("198.51.100.0/24".to_owned(), 10, 0)]);
    assert_eq!(
        sources(web),
        [
            ("192.0.2.0/24".to_owned(), 2, 0),
            ("198.51.100.0/24".to_owned(), 0, 3)
        ]
    );
}

#[test]
fn the_listeners_view_renders_the_recorded_samples() {
    let m = model();
    let mut ui = Ui::default();
    press(&mut ui, KeyCode::Char('4'));
    assert_eq!(ui.tab, Tab::Listeners);
    check("listeners", &render(&m, &mut ui, 110, 11));
    // Rates over the last second of samples (0.9908 s): stalled got spoofer's 10 SYNs and
    // dropped them all (queue 2 over backlog 1), web churn's 2 connections; the namespace's 10
    // overflows are stalled's, its only full queue.
    let all = pick_listeners(&m, "", 0, false);
    assert_eq!(
        all,
        [
            lrow("stalled", STALLED, (2, 1), "10.1", 0, "0.0"),
            lrow("db", DB, (0, 8), "0.0", 0, "0.0"),
            lrow("leaky", LEAKY, (0, 8), "0.0", 0, "0.0"),
            lrow("tls-srv", TLS, (0, 8), "0.0", 0, "0.0"),
            lrow("web", WEB, (0, 8), "2.0", 3, "2.0"),
        ]
    );
    // The namespace's overflows (the kernel counts them per namespace) are stalled's SYNs.
    let stalled = m
        .listeners
        .iter()
        .find(|l| l.comm == "stalled")
        .expect("stalled");
    assert_eq!(stalled.overflow_rate, stalled.syn_rate);
    // churn's SYNs all completed in the last second: spoofer's 3 came before it.
    let web = m.listeners.iter().find(|l| l.comm == "web").expect("web");
    assert_eq!(web.handshake_rate, web.syn_rate);

    // Sorted by SYN/s, most first (five columns right of ADDRESS, reversed).
    for _ in 0..5 {
        press(&mut ui, KeyCode::Char('>'));
    }
    press(&mut ui, KeyCode::Char('r'));
    assert_eq!(ui.sort(), (5, true));
    let frame = render(&m, &mut ui, 110, 11);
    assert!(
        frame.contains("sort: SYN/s desc") && frame.contains("SYN/s▼"),
        "{frame}"
    );
    check("listeners-by-syn", &frame);
    let order: Vec<String> = pick_listeners(&m, "", 5, true)
        .into_iter()
        .map(|l| l.0)
        .collect();
    let by_syn = ["stalled", "web", "tls-srv", "leaky", "db"];
    assert_eq!(order, by_syn);

    // The `/` filter: by comm, by port, by state (every row is a listener).
    for (text, want) in [
        ("comm:stalled", vec!["stalled"]),
        (&*format!("port:{WEB}"), vec!["web"]),
        (&*format!("sport:{DB}"), vec!["db"]),
        ("state:listen", by_syn.to_vec()),
        ("state:estab", vec![]),
        ("addr:192.0.2.", vec!["web"]),
    ] {
        let got: Vec<String> = pick_listeners(&m, text, 5, true)
            .into_iter()
            .map(|l| l.0)
            .collect();
        assert_eq!(got, want, "filter {text:?}");
    }
    type_filter(&mut ui, "comm:stalled");
    check("listeners-filter", &render(&m, &mut ui, 110, 8));
}
