//! The Listeners view: one row per listening socket, with its accept queue against its
//! backlog, the SYNs, half-open requests and completed handshakes of its port, and the accept
//! queue overflows it had. Rows are built from two consecutive listener samples
//! (`facts::listeners`, the same the `syn_flood` and `accept_queue_overflow` rules read); the
//! renderer only draws them.

use std::{cmp::Ordering, net::SocketAddr};

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Style},
    widgets::{Row, Table},
};

use super::{model::Conn, select::Filter};
use crate::facts::listeners::ListenerSample;

/// The columns of the Listeners view, in screen order.
pub const LISTEN_COLUMNS: [&str; 9] = [
    "ADDRESS",
    "PID",
    "COMM",
    "QUEUE",
    "BACKLOG",
    "SYN/s",
    "HALF-OPEN",
    "HANDSHAKE/s",
    "OVERFLOW/s",
];

const WIDTHS: [u16; 9] = [22, 7, 15, 6, 8, 8, 10, 12, 11];

/// One listening socket as a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub netns: u32,
    pub local: SocketAddr,
    pub pid: Option<u32>,
    pub comm: String,
    /// Connections waiting for `accept()`, and the backlog.
    pub queue: u32,
    pub backlog: u32,
    /// SYNs per second to its port since the previous sample (`None`: no SYN counts, or no
    /// previous sample).
    pub syn_rate: Option<f64>,
    pub half_open: u32,
    /// Handshake-completing ACKs per second to its port.
    pub handshake_rate: Option<f64>,
    /// Accept queue overflows per second. The kernel counts them per namespace (`TcpExt`
    /// `ListenOverflows`): they are the listeners' whose queue was full at this sample or the
    /// previous one, and 0 for the others; when none was, every listener of the namespace
    /// shows them, since any of them may have overflowed between the samples.
    pub overflow_rate: Option<f64>,
}

/// The rows of `cur`, with rates since `prev`.
#[must_use]
pub fn rows(prev: Option<&ListenerSample>, cur: &ListenerSample) -> Vec<Listener> {
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let per_s =
        |n: u64| prev.map(|p| n as f64 * 1e9 / cur.ts_ns.saturating_sub(p.ts_ns).max(1) as f64);
    let mut out = Vec::new();
    for port in &cur.ports {
        let before = prev.and_then(|p| {
            p.ports
                .iter()
                .find(|q| q.netns == port.netns && q.port == port.port)
        });
        let delta = |now: Option<u64>, then: Option<u64>| match (now, then) {
            (Some(n), Some(t)) => per_s(n.saturating_sub(t)),
            _ => None,
        };
        let syn_rate = delta(port.syns, before.and_then(|b| b.syns));
        let handshake_rate = delta(port.handshakes, before.and_then(|b| b.handshakes));
        let netns_overflows = match (
            cur.netns(port.netns),
            prev.and_then(|p| p.netns(port.netns)),
        ) {
            (Some(n), Some(t)) => per_s(n.listen_overflows.saturating_sub(t.listen_overflows)),
            _ => None,
        };
        let some_full = [Some(cur), prev]
            .into_iter()
            .flatten()
            .any(|s| full_in(s, port.netns, None));
        for sock in &port.sockets {
            let full =
                sock.full() || prev.is_some_and(|p| full_in(p, port.netns, Some(sock.local)));
            let overflow_rate = netns_overflows.map(|r| if full || !some_full { r } else { 0.0 });
            let holder = sock.holders.first();
            out.push(Listener {
                netns: port.netns,
                local: sock.local,
                pid: holder.map(|h| h.pid),
                comm: holder.map(|h| h.comm.clone()).unwrap_or_default(),
                queue: sock.queue,
                backlog: sock.backlog,
                syn_rate,
                half_open: port.half_open,
                handshake_rate,
                overflow_rate,
            });
        }
    }
    out
}

/// Whether a listener of `netns` in `sample` (the one at `local`, or any) had a full queue.
fn full_in(sample: &ListenerSample, netns: u32, local: Option<SocketAddr>) -> bool {
    sample
        .ports
        .iter()
        .filter(|p| p.netns == netns)
        .flat_map(|p| &p.sockets)
        .any(|s| local.is_none_or(|l| l == s.local) && s.full())
}

impl Listener {
    /// As a listening socket of the Connections view, for the `/` filter (port, pid, comm,
    /// state, address).
    fn as_conn(&self) -> Conn {
        Conn {
            cookie: 0,
            pid: self.pid,
            comm: self.comm.clone(),
            local: self.local,
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            state: observer_common::tcp_state::LISTEN,
            age_ns: None,
            in_state_ns: None,
            bytes_in: None,
            bytes_out: None,
            rtt_us: None,
            retransmits: None,
            uid: String::new(),
            executable: None,
            owner_source: None,
            tls: None,
            lifecycle: None,
            birth_ns: None,
            pre_existing: false,
            resets: None,
            segs: None,
        }
    }
}

fn by(col: usize, a: &Listener, b: &Listener) -> Ordering {
    let rate = |r: Option<f64>| r.unwrap_or(-1.0);
    match col {
        1 => a.pid.cmp(&b.pid),
        2 => a.comm.cmp(&b.comm),
        3 => a.queue.cmp(&b.queue),
        4 => a.backlog.cmp(&b.backlog),
        5 => rate(a.syn_rate).total_cmp(&rate(b.syn_rate)),
        6 => a.half_open.cmp(&b.half_open),
        7 => rate(a.handshake_rate).total_cmp(&rate(b.handshake_rate)),
        8 => rate(a.overflow_rate).total_cmp(&rate(b.overflow_rate)),
        _ => Ordering::Equal,
    }
    .then_with(|| a.local.cmp(&b.local))
    .then_with(|| a.netns.cmp(&b.netns))
}

/// The rows `filter` admits, sorted by column `col` (reversed with `rev`).
#[must_use]
pub fn sorted<'a>(
    rows: &'a [Listener],
    filter: &Filter,
    col: usize,
    rev: bool,
) -> Vec<&'a Listener> {
    let mut out: Vec<&Listener> = rows
        .iter()
        .filter(|l| filter.is_empty() || filter.admits(&l.as_conn()))
        .collect();
    out.sort_by(|a, b| {
        let o = by(col, a, b);
        if rev { o.reverse() } else { o }
    });
    out
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// Draws the table into `area`; returns the selection clamped to the rows.
pub fn draw(
    frame: &mut Frame,
    area: Rect,
    rows: &[Listener],
    (filter, col, rev): (&Filter, usize, bool),
    selected: usize,
    header: Row<'static>,
) -> usize {
    let rows = sorted(rows, filter, col, rev);
    let selected = selected.min(rows.len().saturating_sub(1));
    let fit = usize::from(area.height.saturating_sub(1)).max(1);
    let start = (selected + 1).saturating_sub(fit);
    let shown = rows.iter().enumerate().skip(start).take(fit).map(|(i, l)| {
        let row = Row::new(vec![
            l.local.to_string(),
            l.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            if l.comm.is_empty() {
                "-".to_owned()
            } else {
                l.comm.clone()
            },
            l.queue.to_string(),
            l.backlog.to_string(),
            rate(l.syn_rate),
            l.half_open.to_string(),
            rate(l.handshake_rate),
            rate(l.overflow_rate),
        ]);
        // A full queue is trouble now; drops are trouble for clients.
        let row = if l.queue > 0 && l.queue >= l.backlog || l.overflow_rate.unwrap_or(0.0) > 0.0 {
            row.style(Style::new().fg(Color::Red))
        } else {
            row
        };
        if i == selected {
            row.style(Style::new().add_modifier(ratatui::style::Modifier::REVERSED))
        } else {
            row
        }
    });
    let table = Table::new(shown, WIDTHS.map(Constraint::Length)).header(header);
    frame.render_widget(table, area);
    selected
}

#[cfg(test)]
mod tests {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        facts::{
            Holder,
            listeners::{ListenPort, ListenSock, NetnsStats},
        },
        top::{
            input::{Tab, Ui},
            model::Model,
            view,
        },
    };

    const S: u64 = 1_000_000_000;

    fn sock(local: &str, queue: u32, backlog: u32, pid: u32, comm: &str) -> ListenSock {
        ListenSock {
            local: local.parse().expect("addr"),
            cookie: u64::from(pid),
            queue,
            backlog,
            holders: vec![Holder {
                pid,
                comm: comm.into(),
            }],
            queued: Vec::new(),
        }
    }

    /// A web server under a SYN flood on :443 and a worker that stopped accepting on :8080,
    /// sampled at `t` seconds with these cumulative SYNs, handshakes and overflows.
    fn sample(t: u64, syns: u64, handshakes: u64, overflows: u64, queue: u32) -> ListenerSample {
        ListenerSample {
            ts_ns: t * S,
            counted: true,
            namespaces: vec![NetnsStats {
                netns: 1,
                listen_overflows: overflows,
                ..NetnsStats::default()
            }],
            ports: vec![
                ListenPort {
                    netns: 1,
                    port: 443,
                    sockets: vec![
                        sock("0.0.0.0:443", 0, 511, 100, "nginx"),
                        sock("[::]:443", 1, 511, 100, "nginx"),
                    ],
                    half_open: 256,
                    synack_retrans: 40,
                    syns: Some(syns),
                    handshakes: Some(handshakes),
                    sources: Vec::new(),
                },
                ListenPort {
                    netns: 1,
                    port: 8080,
                    sockets: vec![sock("127.0.0.1:8080", queue, 4, 300, "worker")],
                    half_open: 0,
                    synack_retrans: 0,
                    syns: Some(10 * t),
                    handshakes: Some(10 * t),
                    sources: Vec::new(),
                },
            ],
        }
    }

    fn render(model: &Model, ui: &mut Ui) -> String {
        let mut terminal = Terminal::new(TestBackend::new(110, 8)).expect("terminal");
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

    const LISTENERS: &str = "\
observer top — web1  up 10s  new 0.0/s  closed 0.0/s  retx 0.0/s  resets 0.0/s  lost 0  firing 0
0 sockets:
 1 Connections   2 Processes   3 Anomalies   4 Listeners    sort: ADDRESS asc   filter: -
ADDRESS▲               PID     COMM            QUEUE  BACKLOG  SYN/s    HALF-OPEN  HANDSHAKE/s  OVERFLOW/s
0.0.0.0:443            100     nginx           0      511      2000.0   256        50.0         0.0
127.0.0.1:8080         300     worker          5      4        10.0     0          10.0         1.5
[::]:443               100     nginx           1      511      2000.0   256        50.0         0.0
q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail
";

    #[test]
    fn listeners_view() {
        let prev = sample(8, 1000, 900, 7, 5);
        let cur = sample(10, 5000, 1000, 10, 5);
        let model = Model {
            host: "web1".into(),
            uptime_ns: 10 * S,
            listeners: rows(Some(&prev), &cur),
            ..Model::default()
        };
        let mut ui = Ui::default();
        ui.key(KeyEvent::new(KeyCode::Char('4'), KeyModifiers::NONE));
        assert_eq!(ui.tab, Tab::Listeners);
        // The namespace's overflows are the full queue's (worker, 5 of backlog 4); were no
        // queue full at either sample, they could be any listener's, and each shows them; a
        // queue full at the previous sample only still had them.
        let overflows = |prev_queue: u32, queue: u32| -> Vec<Option<f64>> {
            let (prev, cur) = (sample(8, 0, 0, 7, prev_queue), sample(10, 0, 0, 10, queue));
            rows(Some(&prev), &cur)
                .iter()
                .map(|l| l.overflow_rate)
                .collect()
        };
        assert_eq!(overflows(5, 5), [Some(0.0), Some(0.0), Some(1.5)]);
        assert_eq!(overflows(0, 0), [Some(1.5), Some(1.5), Some(1.5)]);
        assert_eq!(overflows(4, 0), [Some(0.0), Some(0.0), Some(1.5)]);
        assert_eq!(
            rows(None, &cur)[2].overflow_rate,
            None,
            "no rate from one sample"
        );
        let got = render(&model, &mut ui);
        println!("{got}");
        assert_eq!(got, LISTENERS);
        // Sorted by SYN/s, highest first; ties by address.
        ui.sort[Tab::Listeners as usize] = (5, true);
        let got = render(&model, &mut ui);
        let order: Vec<&str> = got
            .lines()
            .skip(4)
            .take(3)
            .map(|l| l.split_whitespace().next().unwrap_or_default())
            .collect();
        assert_eq!(order, ["[::]:443", "0.0.0.0:443", "127.0.0.1:8080"]);
        assert!(got.contains("SYN/s▼"), "{got}");
        // The `/` filter: by comm, then by port.
        for (text, want) in [
            ("comm:worker", vec!["127.0.0.1:8080"]),
            ("port:443", vec!["[::]:443", "0.0.0.0:443"]),
        ] {
            ui.filter = crate::top::select::Filter::parse(text);
            let got = render(&model, &mut ui);
            let shown: Vec<&str> = got
                .lines()
                .skip(4)
                .take(3)
                .filter_map(|l| l.split_whitespace().next())
                .filter(|w| w.contains(':'))
                .collect();
            assert_eq!(shown, want, "{text}: {got}");
        }
    }

    #[test]
    fn first_sample_has_no_rates() {
        let rows = rows(None, &sample(1, 10, 10, 0, 0));
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.syn_rate.is_none()
            && r.handshake_rate.is_none()
            && r.overflow_rate.is_none()));
        assert_eq!(rows[2].local, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(rows[2].pid, Some(300));
        assert_eq!(rows[2].comm, "worker");
        assert_eq!((rows[2].queue, rows[2].backlog), (0, 4));
    }
}
