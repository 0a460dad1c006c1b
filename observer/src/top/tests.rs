//! Frames drawn into ratatui's `TestBackend` from a fixed model, compared as text; and the
//! filter and sort on their own.

use std::net::SocketAddr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use observer_common::{CloseInfo, ConnState, tcp_state};
use ratatui::{Terminal, backend::TestBackend};

use super::{
    alerts::{AlertLog, RESOLVED_KEPT, RESOLVED_KEPT_NS},
    input::{Action, Tab, Ui},
    model::{Conn, Model, OwnerRate, Rates},
    select::{self, Filter},
    view,
};
use crate::{
    detect::{Alert, Status, Subject},
    tls::{TlsFacts, TlsRole},
    track::lifecycle::{LateResets, Lifecycle},
    track::record::{Process, Uid},
};

const S: u64 = 1_000_000_000;

pub(super) fn conn(
    cookie: u64,
    pid: u32,
    comm: &str,
    local: &str,
    remote: &str,
    state: u8,
) -> Conn {
    Conn {
        cookie,
        pid: Some(pid),
        comm: comm.to_owned(),
        local: local.parse::<SocketAddr>().expect("addr"),
        remote: remote.parse::<SocketAddr>().expect("addr"),
        state,
        age_ns: Some(cookie * 7 * S),
        in_state_ns: Some(cookie * 3 * S),
        bytes_in: Some(cookie * 1500),
        bytes_out: Some(cookie * 100),
        rtt_us: Some(u32::try_from(cookie).expect("small") * 40),
        retransmits: Some(u32::from(cookie == 3)),
        uid: format!("C{cookie:017}"),
        executable: Some(format!("/usr/bin/{comm}")),
        owner_source: Some("connect"),
        tls: None,
        lifecycle: None,
        birth_ns: Some(NOW - cookie * 7 * S),
        pre_existing: false,
        resets: Some((0, u16::from(cookie == 3))),
        segs: Some((
            u32::try_from(cookie).expect("small") * 3,
            u32::try_from(cookie).expect("small") * 4,
        )),
    }
}

const NOW: u64 = 3725 * S;

/// An accepted socket's kernel transitions: born at `birth` from its listener, established
/// `rtt` later, and each later state at the offset given.
fn lifecycle(birth: u64, later: &[(u8, u64)]) -> Lifecycle {
    let mut st = ConnState::zeroed();
    st.first_state = tcp_state::LISTEN;
    st.birth_ns = birth;
    let mut steps = vec![(tcp_state::SYN_RECV, 0)];
    steps.extend_from_slice(later);
    for (i, &(state, at)) in steps.iter().enumerate() {
        st.states[i] = state;
        st.ts[i] = birth + at;
    }
    st.n_transitions = u8::try_from(steps.len()).expect("few");
    Lifecycle::derive(&st, &CloseInfo::default(), LateResets::default())
}

/// A TLS 1.3 handshake a client made for `sni`.
fn tls(sni: &str) -> TlsFacts {
    TlsFacts {
        established: true,
        version: Some(0x0304),
        cipher: Some(0x1302),
        curve: Some(0x001d),
        server_name: Some(sni.to_owned()),
        next_protocol: Some("h2".to_owned()),
        alpn_offered: vec!["h2".to_owned(), "http/1.1".to_owned()],
        resumed: Some(false),
        handshake_duration_us: Some(2400),
        library: Some("openssl/3.0.19".to_owned()),
        error: None,
        role: Some(TlsRole::Server),
        source: "uprobe+wire",
    }
}

fn process(pid: u32, name: &str) -> Process {
    let mut comm = [0u8; 16];
    comm[..name.len()].copy_from_slice(name.as_bytes());
    Process { pid, uid: 0, comm }
}

fn alert(rule: &'static str, status: Status, ts_s: u64, subject: Subject) -> Alert {
    Alert {
        rule,
        status,
        ts_ns: ts_s * S,
        severity: 3,
        reason: format!("{rule} {}", status.as_str()),
        subject,
        observed: 2,
        threshold: 1,
        window_s: 60,
        evidence: [
            ("oldest_age_s", serde_json::json!(61)),
            ("peers", serde_json::json!(["10.0.0.7:33000", "10.0.0.8:1"])),
        ]
        .into_iter()
        .collect(),
        samples: vec![Uid(*b"C00000000000000004")],
    }
}

fn stuck_python() -> Subject {
    Subject {
        netns: Some(4_026_531_840),
        process: Some(process(300, "python3")),
        destination: None,
    }
}

fn refused_db() -> Subject {
    Subject {
        netns: Some(4_026_531_840),
        process: Some(process(200, "curl")),
        destination: Some(("10.0.0.5".parse().expect("ip"), 5432)),
    }
}

/// A host with a web server (TLS), its clients, a stuck `CLOSE_WAIT` and a listener.
fn model() -> Model {
    let mut m = Model {
        host: "web1".into(),
        uptime_ns: 3725 * S,
        rates: Rates {
            new: 2.0,
            closed: 1.5,
            retransmits: 0.25,
            resets: 0.0,
        },
        lost: 0,
        now_ns: NOW,
        boot_to_unix_ns: 1_790_000_000_000_000_000,
        anomalies: Vec::new(),
        // nginx accepted 2 connections a second over the last interval; a cron job's curl
        // opened and closed one, and holds none now.
        owner_rates: vec![
            OwnerRate {
                pid: Some(100),
                comm: "nginx".into(),
                new_per_s: 2.0,
                bytes_per_s: 3072.0,
            },
            OwnerRate {
                pid: Some(400),
                comm: "curl".into(),
                new_per_s: 1.0,
                bytes_per_s: 300.0,
            },
        ],
        conns: vec![
            conn(
                1,
                100,
                "nginx",
                "10.0.0.1:443",
                "0.0.0.0:0",
                tcp_state::LISTEN,
            ),
            conn(
                2,
                100,
                "nginx",
                "10.0.0.1:443",
                "10.0.0.9:50000",
                tcp_state::ESTABLISHED,
            ),
            conn(
                3,
                200,
                "curl",
                "10.0.0.1:41000",
                "93.184.216.34:80",
                tcp_state::ESTABLISHED,
            ),
            conn(
                4,
                300,
                "python3",
                "10.0.0.1:8080",
                "10.0.0.7:33000",
                tcp_state::CLOSE_WAIT,
            ),
        ],
        listeners: Vec::new(),
    };
    m.conns[1].tls = Some(tls("web1.example.com"));
    // Established 8 s after its SYN (in that state for the last 6 s).
    m.conns[1].lifecycle = Some(lifecycle(
        NOW - 14 * S,
        &[(tcp_state::ESTABLISHED, 8 * S + 1_250_000)],
    ));
    m
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

fn press(ui: &mut Ui, code: KeyCode) -> Action {
    ui.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn type_filter(ui: &mut Ui, text: &str) {
    press(ui, KeyCode::Char('/'));
    for c in text.chars() {
        press(ui, KeyCode::Char(c));
    }
    press(ui, KeyCode::Enter);
}

#[test]
fn connections_view() {
    let got = render(&model(), &mut Ui::default(), 160, 12);
    println!("{got}");
    assert_eq!(got, CONNECTIONS);
}

#[test]
fn processes_view() {
    let mut ui = Ui::default();
    assert_eq!(press(&mut ui, KeyCode::Char('2')), Action::Redraw);
    assert_eq!(ui.tab, Tab::Processes);
    let got = render(&model(), &mut ui, 110, 10);
    println!("{got}");
    assert_eq!(got, PROCESSES);
}

#[test]
fn detail_help_pause_and_loss() {
    let mut m = model();
    m.lost = 12;
    let mut ui = Ui::default();
    press(&mut ui, KeyCode::Down);
    press(&mut ui, KeyCode::Enter);
    press(&mut ui, KeyCode::Char('p'));
    let got = render(&m, &mut ui, 160, 26);
    println!("{got}");
    assert_eq!(got, DETAIL);
    // A connection the kernel does not track, without TLS: the pane says so.
    press(&mut ui, KeyCode::Down);
    let other = render(&m, &mut ui, 160, 26);
    assert!(
        other.contains("owner 200 curl (connect)")
            && other.contains("no transitions recorded")
            && other.contains("none seen (`--tls` watches handshakes)")
            && other.contains("resets sent/received 0/1"),
        "{other}"
    );
    press(&mut ui, KeyCode::Up);
    let mut terminal = Terminal::new(TestBackend::new(130, 20)).expect("terminal");
    terminal.draw(|f| view::draw(f, &m, &mut ui)).expect("draw");
    let buf = terminal.backend().buffer();
    let x = (0..130)
        .find(|&x| (0..4).all(|i| buf[(x + i, 0)].symbol() == &"lost"[i as usize..=i as usize]))
        .expect("loss shown");
    assert_eq!(buf[(x, 0)].fg, ratatui::style::Color::Red, "loss is red");
    press(&mut ui, KeyCode::Char('?'));
    let got = render(&m, &mut ui, 130, 20);
    assert!(got.contains("help (any key closes)"), "{got}");
    press(&mut ui, KeyCode::Char('x'));
    assert!(!ui.help);
    assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Quit);
    assert_eq!(
        ui.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}

#[test]
fn sorting_by_column_and_reversed() {
    let m = model();
    let order = |ui: &Ui| -> Vec<u64> {
        let (col, rev) = ui.sort();
        select::conns(&m.conns, &ui.filter, col, rev)
            .iter()
            .map(|c| c.cookie)
            .collect()
    };
    let mut ui = Ui::default();
    // By state: CLOSE_WAIT, ESTABLISHED (by local address), LISTEN.
    assert_eq!(order(&ui), [4, 2, 3, 1]);
    press(&mut ui, KeyCode::Char('>'));
    assert_eq!(ui.sort(), (5, false), "age");
    assert_eq!(order(&ui), [1, 2, 3, 4]);
    press(&mut ui, KeyCode::Char('r'));
    assert_eq!(order(&ui), [4, 3, 2, 1]);
    press(&mut ui, KeyCode::Char('<'));
    press(&mut ui, KeyCode::Char('<'));
    assert_eq!(ui.sort(), (3, true), "remote, still reversed");
    assert_eq!(order(&ui), [3, 2, 4, 1]);
    let got = render(&m, &mut ui, 130, 12);
    assert!(got.contains("REMOTE▼"), "{got}");
    assert!(got.contains("sort: REMOTE desc"), "{got}");
    // By TLS server name: unknown first.
    let by_sni: Vec<u64> = select::conns(&m.conns, &Filter::default(), 12, true)
        .iter()
        .map(|c| c.cookie)
        .collect();
    assert_eq!(by_sni[0], 2);
    // Every column sorts, wrapping around.
    for _ in 0..13 {
        press(&mut ui, KeyCode::Char('>'));
        assert_eq!(order(&ui).len(), 4);
    }
    // Processes: by connections, most first.
    let procs = select::procs(m.processes(), &Filter::default(), 2, true);
    assert_eq!(procs[0].comm, "nginx");
    assert_eq!(procs[0].total, 2);
    let by_close_wait = select::procs(m.processes(), &Filter::default(), 6, true);
    assert_eq!(by_close_wait[0].comm, "python3");
    assert_eq!(by_close_wait[0].close_wait, 1);
    // By new connections and by bytes per second, most first.
    let pids = |col: usize| -> Vec<Option<u32>> {
        select::procs(m.processes(), &Filter::default(), col, true)
            .iter()
            .map(|p| p.pid)
            .collect()
    };
    assert_eq!(pids(3), [Some(100), Some(400), Some(300), Some(200)]);
    assert_eq!(pids(11), [Some(100), Some(400), Some(300), Some(200)]);
}

#[test]
fn filter_expressions() {
    let m = model();
    let pick = |text: &str| -> Vec<u64> {
        select::conns(&m.conns, &Filter::parse(text), 0, false)
            .iter()
            .map(|c| c.cookie)
            .collect()
    };
    let cases: &[(&str, &[u64])] = &[
        ("", &[1, 2, 3, 4]),
        ("port:443", &[1, 2]),
        ("sport:8080", &[4]),
        ("dport:80", &[3]),
        ("dport:8", &[]),
        ("pid:200", &[3]),
        ("comm:NGI", &[1, 2]),
        ("state:close-wait", &[4]),
        ("state:estab", &[2, 3]),
        ("state:LISTEN", &[1]),
        ("addr:93.184", &[3]),
        ("nginx estab", &[2]),
        ("python", &[4]),
        ("300", &[4]),
        ("10.0.0.9", &[2]),
        ("nothing-like-this", &[]),
        ("example.com", &[2]),
    ];
    for (text, want) in cases {
        assert_eq!(pick(text), *want, "filter {text:?}");
    }
    let mut ui = Ui::default();
    type_filter(&mut ui, "port:443");
    assert_eq!(ui.filter_text, "port:443");
    let got = render(&m, &mut ui, 130, 12);
    assert!(got.contains("filter: port:443"), "{got}");
    assert!(
        got.contains("10.0.0.9:50000") && !got.contains("python3"),
        "{got}"
    );
    // While typing, keys go to the filter, not to the commands.
    press(&mut ui, KeyCode::Char('/'));
    assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Redraw);
    assert_eq!(ui.editing.as_deref(), Some("port:443q"));
    press(&mut ui, KeyCode::Esc);
    assert_eq!(ui.filter_text, "port:443", "Esc cancels the edit");
    press(&mut ui, KeyCode::Esc);
    assert!(ui.filter.is_empty(), "Esc again clears the filter");
    // The processes view filters by pid and name: both curls, the one with rates alone too.
    let procs = select::procs(m.processes(), &Filter::parse("comm:curl"), 0, false);
    let pids: Vec<Option<u32>> = procs.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [Some(200), Some(400)]);
    let procs = select::procs(m.processes(), &Filter::parse("pid:400"), 0, false);
    assert_eq!(
        (procs.len(), procs[0].total, procs[0].new_per_s),
        (1, 0, 1.0)
    );
}

#[test]
fn a_small_terminal_and_many_rows() {
    let mut m = model();
    m.conns = (1..=10_000)
        .map(|i| {
            conn(
                i,
                1000 + u32::try_from(i % 50).expect("small"),
                "load",
                "10.0.0.1:80",
                &format!("10.1.{}.{}:{}", i / 250, i % 250, 1024 + i),
                tcp_state::ESTABLISHED,
            )
        })
        .collect();
    let mut ui = Ui::default();
    press(&mut ui, KeyCode::End);
    let got = render(&m, &mut ui, 60, 8);
    assert_eq!(ui.selected, 9_999, "End selects the last row");
    assert!(got.contains("10000 sockets"), "{got}");
    // Too small to be useful, but drawn without a panic.
    render(&m, &mut ui, 10, 3);
}

#[test]
fn the_alert_log_folds_firing_and_resolved() {
    let mut log = AlertLog::default();
    log.push(alert(
        "close_wait_stuck",
        Status::Firing,
        100,
        stuck_python(),
    ));
    log.push(alert("connect_failures", Status::Firing, 110, refused_db()));
    log.push(alert(
        "connect_failures",
        Status::Resolved,
        130,
        refused_db(),
    ));
    // Fires again later: a new row, the resolved one stays.
    log.push(alert("connect_failures", Status::Firing, 200, refused_db()));
    let rows: Vec<(&str, Option<u64>, Option<u64>)> = log
        .rows()
        .iter()
        .map(|r| {
            (
                r.alert.rule,
                r.fired_ns.map(|t| t / S),
                r.resolved_ns.map(|t| t / S),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("close_wait_stuck", Some(100), None),
            ("connect_failures", Some(110), Some(130)),
            ("connect_failures", Some(200), None),
        ]
    );
    assert_eq!(
        log.rows()[1].alert.status,
        Status::Resolved,
        "the latest alert is shown"
    );
    // A resolution without its firing (it fired before the view started).
    log.push(alert("rst_storm", Status::Resolved, 210, refused_db()));
    assert_eq!(log.rows()[3].fired_ns, None);
    // Resolved rows leave after RESOLVED_KEPT_NS; firing ones stay.
    log.expire(130 * S + RESOLVED_KEPT_NS);
    assert_eq!(log.rows().len(), 3);
    log.expire(210 * S + RESOLVED_KEPT_NS);
    assert_eq!(log.rows().iter().filter(|r| r.firing()).count(), 2);
    assert_eq!(log.rows().len(), 2);
    // At most RESOLVED_KEPT resolved rows: the oldest go.
    for i in 0..(RESOLVED_KEPT as u64 + 7) {
        let t = 1000 + 2 * i;
        log.push(alert("rst_storm", Status::Firing, t, refused_db()));
        log.push(alert("rst_storm", Status::Resolved, t + 1, refused_db()));
    }
    log.expire(1000 * S);
    let resolved: Vec<u64> = log.rows().iter().filter_map(|r| r.resolved_ns).collect();
    assert_eq!(resolved.len(), RESOLVED_KEPT);
    assert_eq!(resolved.iter().min(), Some(&((1000 + 2 * 7 + 1) * S)));
}

pub(super) fn with_alerts() -> Model {
    let mut m = model();
    let mut log = AlertLog::default();
    log.push(alert(
        "connect_failures",
        Status::Firing,
        3000,
        refused_db(),
    ));
    log.push(alert(
        "connect_failures",
        Status::Resolved,
        3100,
        refused_db(),
    ));
    log.push(alert(
        "close_wait_stuck",
        Status::Firing,
        3600,
        stuck_python(),
    ));
    m.anomalies = log.rows().to_vec();
    m
}

#[test]
fn anomalies_view() {
    let mut ui = Ui::default();
    press(&mut ui, KeyCode::Char('3'));
    assert_eq!(ui.tab, Tab::Anomalies);
    let m = with_alerts();
    assert_eq!(m.firing(), 1);
    let got = render(&m, &mut ui, 130, 20);
    println!("{got}");
    assert_eq!(got, ANOMALIES);
    // The header's firing count is red.
    let mut terminal = Terminal::new(TestBackend::new(130, 20)).expect("terminal");
    terminal.draw(|f| view::draw(f, &m, &mut ui)).expect("draw");
    let buf = terminal.backend().buffer();
    let x = (0..124)
        .find(|&x| (0..6).all(|i| buf[(x + i, 0)].symbol() == &"firing"[i as usize..=i as usize]))
        .expect("firing count shown");
    assert_eq!(buf[(x, 0)].fg, ratatui::style::Color::Red);
    // Filters over the subject; the pane follows the selection.
    let pick = |text: &str| -> Vec<&str> {
        select::anomalies(&m.anomalies, &Filter::parse(text), 0, false)
            .iter()
            .map(|a| a.alert.rule)
            .collect()
    };
    let cases: &[(&str, &[&str])] = &[
        ("", &["close_wait_stuck", "connect_failures"]),
        ("state:firing", &["close_wait_stuck"]),
        ("state:resolved", &["connect_failures"]),
        ("pid:200", &["connect_failures"]),
        ("comm:PYTH", &["close_wait_stuck"]),
        ("port:5432", &["connect_failures"]),
        ("addr:10.0.0.5", &["connect_failures"]),
        ("connect", &["connect_failures"]),
        ("300", &["close_wait_stuck"]),
        ("nothing-like-this", &[]),
    ];
    for (text, want) in cases {
        assert_eq!(pick(text), *want, "filter {text:?}");
    }
    press(&mut ui, KeyCode::Down);
    let got = render(&m, &mut ui, 130, 20);
    assert!(
        got.contains("connect_failures resolved — curl (pid 200) → 10.0.0.5:5432"),
        "{got}"
    );
    // Sorting: by rule, then reversed.
    press(&mut ui, KeyCode::Char('>'));
    assert_eq!(
        pick_sorted(&m, &ui),
        ["close_wait_stuck", "connect_failures"]
    );
    press(&mut ui, KeyCode::Char('r'));
    assert_eq!(
        pick_sorted(&m, &ui),
        ["connect_failures", "close_wait_stuck"]
    );
    type_filter(&mut ui, "comm:nobody");
    let got = render(&m, &mut ui, 130, 20);
    assert!(got.contains("no alert matches the filter"), "{got}");
    // Tab cycles through every view and back.
    for want in [
        Tab::Listeners,
        Tab::Connections,
        Tab::Processes,
        Tab::Anomalies,
    ] {
        press(&mut ui, KeyCode::Tab);
        assert_eq!(ui.tab, want);
    }
    press(&mut ui, KeyCode::BackTab);
    assert_eq!(ui.tab, Tab::Processes);
    assert_eq!(
        press(&mut ui, KeyCode::Char('9')),
        Action::None,
        "no ninth view"
    );
}

fn pick_sorted(m: &Model, ui: &Ui) -> Vec<&'static str> {
    let (col, rev) = ui.sort();
    select::anomalies(&m.anomalies, &ui.filter, col, rev)
        .iter()
        .map(|a| a.alert.rule)
        .collect()
}

#[test]
fn keys_from_raw_bytes() {
    use super::input::keys_of;
    let plain = |c| KeyEvent::new(c, KeyModifiers::NONE);
    let cases: &[(&[u8], &[KeyEvent])] = &[
        (b"q", &[plain(KeyCode::Char('q'))]),
        (
            b"/pid:7\r",
            &[
                plain(KeyCode::Char('/')),
                plain(KeyCode::Char('p')),
                plain(KeyCode::Char('i')),
                plain(KeyCode::Char('d')),
                plain(KeyCode::Char(':')),
                plain(KeyCode::Char('7')),
                plain(KeyCode::Enter),
            ],
        ),
        (
            b"\x1b[A\x1b[B\x1b[5~\x1b[6~\t\x1b[Z",
            &[
                plain(KeyCode::Up),
                plain(KeyCode::Down),
                plain(KeyCode::PageUp),
                plain(KeyCode::PageDown),
                plain(KeyCode::Tab),
                plain(KeyCode::BackTab),
            ],
        ),
        (b"\x1b", &[plain(KeyCode::Esc)]),
        (b"\x7f", &[plain(KeyCode::Backspace)]),
        (
            b"\x03",
            &[KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)],
        ),
        // An unknown sequence (a focus report) and a UTF-8 letter are skipped.
        (b"\x1b[I2\xc3\xa9", &[plain(KeyCode::Char('2'))]),
    ];
    for (bytes, want) in cases {
        assert_eq!(keys_of(bytes), *want, "{bytes:?}");
    }
}

#[test]
fn formats() {
    assert_eq!(view::duration(850_000_000), "850ms");
    assert_eq!(view::duration(12 * S), "12s");
    assert_eq!(view::duration(303 * S), "5m03s");
    assert_eq!(view::duration(3 * 3600 * S + 7 * 60 * S), "3h07m");
    assert_eq!(view::duration(2 * 86_400 * S + 4 * 3600 * S), "2d04h");
    assert_eq!(view::bytes(512), "512");
    assert_eq!(view::bytes(1536), "1.5K");
    assert_eq!(view::bytes(20 << 20), "20M");
    assert_eq!(view::rtt(85), "85µs");
    assert_eq!(view::rtt(1250), "1.2ms");
}

const ANOMALIES: &str = "\
observer top — web1  up 1h02m  new 2.0/s  closed 1.5/s  retx 0.2/s  resets 0.0/s  lost 0  firing 1
4 sockets: CLOSE_WAIT 1 ESTABLISHED 2 LISTEN 1
 1 Connections   2 Processes   3 Anomalies   4 Listeners    sort: STATUS asc   filter: -
STATUS▲   RULE                   SEV    PID     COMM            DESTINATION            SINCE    OBS/THR  REASON
FIRING    close_wait_stuck       medium 300     python3         -                      2m05s    2/1      close_wait_stuck firing
resolved  connect_failures       medium 200     curl            10.0.0.5:5432          12m05s   2/1      connect_failures resolved






┌ alert ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┐
│close_wait_stuck FIRING — python3 (pid 300)  netns 4026531840 — fired 2m05s ago                                                 │
│reason: close_wait_stuck firing                                                                                                 │
│observed 2  threshold 1  window 60s                                                                                             │
│evidence: oldest_age_s: 61  peers: 10.0.0.7:33000, 10.0.0.8:1                                                                   │
│connections: C00000000000000004                                                                                                 │
└────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┘
q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail
";
const CONNECTIONS: &str = "\
observer top — web1  up 1h02m  new 2.0/s  closed 1.5/s  retx 0.2/s  resets 0.0/s  lost 0  firing 0
4 sockets: CLOSE_WAIT 1 ESTABLISHED 2 LISTEN 1
 1 Connections   2 Processes   3 Anomalies   4 Listeners    sort: STATE asc   filter: -
PID     COMM            LOCAL                  REMOTE                 STATE▲      AGE     IN-STATE RX      TX      RTT     RETX  TLS  SNI
300     python3         10.0.0.1:8080          10.0.0.7:33000         CLOSE_WAIT  28s     12s      5.9K    400     160µs   0     -    -
100     nginx           10.0.0.1:443           10.0.0.9:50000         ESTABLISHED 14s     6s       2.9K    200     80µs    0     1.3  web1.example.com
200     curl            10.0.0.1:41000         93.184.216.34:80       ESTABLISHED 21s     9s       4.4K    300     120µs   1     -    -
100     nginx           10.0.0.1:443           0.0.0.0:0              LISTEN      7s      3s       1.5K    100     40µs    0     -    -



q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail
";
const PROCESSES: &str = "\
observer top — web1  up 1h02m  new 2.0/s  closed 1.5/s  retx 0.2/s  resets 0.0/s  lost 0  firing 0
4 sockets: CLOSE_WAIT 1 ESTABLISHED 2 LISTEN 1
 1 Connections   2 Processes   3 Anomalies   4 Listeners    sort: CONNS desc   filter: -
PID     COMM            CONNS▼ NEW/s   ESTAB  LISTEN CLOSE_WAIT TIME_WAIT OTHER  RETX   RX+TX    BYTES/s
100     nginx           2      2.0     1      1      0          0         0      0      4.7K     3.0K
300     python3         1      0.0     0      0      1          0         0      0      6.2K     0
200     curl            1      0.0     1      0      0          0         0      1      4.7K     0
400     curl            0      1.0     0      0      0          0         0      0      0        300

q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail
";
const DETAIL: &str = "\
observer top — web1  up 1h02m  new 2.0/s  closed 1.5/s  retx 0.2/s  resets 0.0/s  lost 12  firing 0  PAUSED
4 sockets: CLOSE_WAIT 1 ESTABLISHED 2 LISTEN 1
 1 Connections   2 Processes   3 Anomalies   4 Listeners    sort: STATE asc   filter: -
PID     COMM            LOCAL                  REMOTE                 STATE▲      AGE     IN-STATE RX      TX      RTT     RETX  TLS  SNI
300     python3         10.0.0.1:8080          10.0.0.7:33000         CLOSE_WAIT  28s     12s      5.9K    400     160µs   0     -    -
100     nginx           10.0.0.1:443           10.0.0.9:50000         ESTABLISHED 14s     6s       2.9K    200     80µs    0     1.3  web1.example.com
200     curl            10.0.0.1:41000         93.184.216.34:80       ESTABLISHED 21s     9s       4.4K    300     120µs   1     -    -
100     nginx           10.0.0.1:443           0.0.0.0:0              LISTEN      7s      3s       1.5K    100     40µs    0     -    -




┌ detail (Enter/Esc closes) ───────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┐
│10.0.0.1:443 → 10.0.0.9:50000  ESTABLISHED for 6s, born 14s ago                                                                                               │
│owner 100 nginx (connect)  exe /usr/bin/nginx  uid C00000000000000002  cookie 0x2                                                                             │
│lifecycle (UTC)                               TLS handshake                                                                                                   │
│15:15:11.000            born from LISTEN      TLS 1.3, established, as server                                                                                 │
│15:15:11.000      +0µs  SYN_RECV              server name  web1.example.com                                                                                   │
│15:15:19.001       +8s  ESTABLISHED (now)     ALPN         h2 (offered h2, http/1.1)                                                                          │
│                                              cipher       TLS_AES_256_GCM_SHA384                                                                             │
│                                              group        x25519                                                                                             │
│                                              resumed      no                                                                                                 │
│                                              took         2.4ms  (uprobe+wire, openssl/3.0.19)                                                               │
│rx 2.9K  tx 200  segs out/in 6/8  rtt 80µs  retransmits 0  resets sent/received 0/0                                                                           │
└──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────┘
q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail
";
