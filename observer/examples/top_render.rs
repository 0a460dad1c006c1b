//! Time to draw one `observer top` frame with N connections (default 10,000):
//! `cargo run --release -p observer --example top_render [N]`.
//!
//! Builds the read model from N snapshot rows (what each refresh does), then draws frames into
//! ratatui's `TestBackend` at 200×50: the Connections view sorted by state (the default), by
//! remote address reversed, with a filter, and the Processes view. A frame includes filtering and
//! sorting every row, building the visible ones, and ratatui's buffer work; it excludes writing
//! the changed cells to a real terminal. BENCHMARKS.md quotes its output.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use observer::{
    top::{
        input::Ui,
        model::{Conn, Model},
        view,
    },
    track::{
        record::{Process, Uid},
        snapshot::Row,
    },
};
use observer_common::tcp_state;
use ratatui::{Terminal, backend::TestBackend};

const S: u64 = 1_000_000_000;

fn row(i: u32) -> Row {
    let mut comm = [0u8; 16];
    let name = format!("worker{}", i % 40);
    comm[..name.len()].copy_from_slice(name.as_bytes());
    let state = match i % 10 {
        0 => tcp_state::TIME_WAIT,
        1 => tcp_state::CLOSE_WAIT,
        2 => tcp_state::SYN_SENT,
        _ => tcp_state::ESTABLISHED,
    };
    Row {
        uid: Uid(*b"C0123456789abcdefg"),
        netns: 4_026_531_840,
        cookie: u64::from(i),
        state,
        local: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 8080)),
        remote: SocketAddr::from((Ipv4Addr::from(0x0a01_0000 + i), 1024 + (i % 60_000) as u16)),
        process: Some(Process {
            pid: 1000 + i % 40,
            uid: 0,
            comm,
        }),
        executable: None,
        owner_source: Some("accept"),
        uid_owner: 0,
        age_ns: Some(u64::from(i) * S / 10),
        age_min_ns: None,
        in_state_ns: Some(u64::from(i) * S / 20),
        bytes: Some((u64::from(i) * 100, u64::from(i) * 1500)),
        srtt_us: Some(50 + i % 900),
        retransmits: Some(i % 7),
        segs: Some((i % 50, i % 60)),
        lifecycle: None,
        birth_ns: None,
        pre_existing: false,
        resets: Some((0, 0)),
    }
}

fn time(runs: u32, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut all: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    let median = all[all.len() / 2];
    let p99 = all[all.len() * 99 / 100];
    (median, p99)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rows: Vec<Row> = (0..n).map(row).collect();
    let mut model = Model {
        host: "bench".into(),
        ..Model::default()
    };
    let (median, p99) = time(50, || {
        model.conns = rows.iter().map(Conn::from_row).collect();
    });
    println!("{n} connections, 200x50 terminal");
    println!("model from snapshot rows           median {median:>10.2?}  p99 {p99:>10.2?}");

    let mut terminal = Terminal::new(TestBackend::new(200, 50)).expect("terminal");
    let key = |ui: &mut Ui, c: KeyCode| {
        ui.key(KeyEvent::new(c, KeyModifiers::NONE));
    };
    let mut cases: Vec<(&str, Ui)> = Vec::new();
    cases.push(("connections, by state", Ui::default()));
    let mut ui = Ui::default();
    key(&mut ui, KeyCode::Char('<'));
    key(&mut ui, KeyCode::Char('r'));
    cases.push(("connections, by remote desc", ui));
    let mut ui = Ui::default();
    key(&mut ui, KeyCode::Char('/'));
    for c in "state:close-wait".chars() {
        key(&mut ui, KeyCode::Char(c));
    }
    key(&mut ui, KeyCode::Enter);
    cases.push(("connections, filtered", ui));
    let mut ui = Ui::default();
    key(&mut ui, KeyCode::Char('2'));
    cases.push(("processes", ui));
    for (name, mut ui) in cases {
        let (median, p99) = time(200, || {
            terminal
                .draw(|f| view::draw(f, &model, &mut ui))
                .expect("draw");
        });
        println!("frame: {name:<27}  median {median:>10.2?}  p99 {p99:>10.2?}");
    }
}
