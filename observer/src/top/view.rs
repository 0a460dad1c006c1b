//! Draws one frame from the read model and the UI state. No data is changed here.

use std::fmt::Write as _;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Row, Table},
};

use super::{
    anomalies,
    detail::Pane,
    input::{Tab, Ui},
    model::{Conn, Model, Proc},
    select::{self, CONN_COLUMNS, PROC_COLUMNS},
};

const CONN_WIDTHS: [u16; 13] = [7, 15, 22, 22, 11, 7, 8, 7, 7, 7, 5, 4, 24];
const PROC_WIDTHS: [u16; 12] = [7, 15, 6, 7, 6, 6, 10, 9, 6, 6, 8, 8];

/// Draws everything; clamps the selection to the rows shown.
pub fn draw(frame: &mut Frame, model: &Model, ui: &mut Ui) {
    let (col, rev) = ui.sort();
    // The Connections rows are chosen first: the detail pane's height depends on its row.
    let conns = (ui.tab == Tab::Connections).then(|| {
        let rows = select::conns(&model.conns, &ui.filter, col, rev);
        ui.selected = ui.selected.min(rows.len().saturating_sub(1));
        rows
    });
    let pane = conns
        .as_ref()
        .filter(|_| ui.detail)
        .and_then(|rows| rows.get(ui.selected))
        .map(|c| Pane::of(c, model));
    let detail_height = pane.as_ref().map_or(0, Pane::height);
    let [head, tabs, body, detail, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(detail_height),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header(model, ui), head);
    frame.render_widget(tab_line(ui), tabs);
    match ui.tab {
        Tab::Connections => {
            let rows = conns.unwrap_or_default();
            let shown = window(&rows, ui.selected, body.height);
            let table = Table::new(
                shown.iter().map(|(i, c)| conn_row(c, *i == ui.selected)),
                CONN_WIDTHS.map(Constraint::Length),
            )
            .header(column_header(&CONN_COLUMNS, col, rev));
            frame.render_widget(table, body);
            if let Some(pane) = pane {
                pane.draw(frame, detail);
            }
        }
        Tab::Processes => {
            let rows = select::procs(model.processes(), &ui.filter, col, rev);
            ui.selected = ui.selected.min(rows.len().saturating_sub(1));
            let refs: Vec<&Proc> = rows.iter().collect();
            let shown = window(&refs, ui.selected, body.height);
            let table = Table::new(
                shown.iter().map(|(i, p)| proc_row(p, *i == ui.selected)),
                PROC_WIDTHS.map(Constraint::Length),
            )
            .header(column_header(&PROC_COLUMNS, col, rev));
            frame.render_widget(table, body);
        }
        Tab::Anomalies => anomalies::draw(frame, model, ui, body),
        Tab::Listeners => {
            let (col, rev) = ui.sort();
            let head = column_header(&super::listeners::LISTEN_COLUMNS, col, rev);
            ui.selected = super::listeners::draw(
                frame,
                body,
                &model.listeners,
                (&ui.filter, col, rev),
                ui.selected,
                head,
            );
        }
    }
    frame.render_widget(footer(ui), foot);
    if ui.help {
        help(frame);
    }
}

/// The rows that fit in `height` (less the column header), keeping `selected` in view.
pub(super) fn window<'a, T>(rows: &[&'a T], selected: usize, height: u16) -> Vec<(usize, &'a T)> {
    let fit = usize::from(height.saturating_sub(1)).max(1);
    let start = (selected + 1).saturating_sub(fit);
    rows.iter()
        .copied()
        .enumerate()
        .skip(start)
        .take(fit)
        .collect()
}

fn header(model: &Model, ui: &Ui) -> Paragraph<'static> {
    let mut first = vec![
        Span::styled(
            format!("observer top — {}", model.host),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("  up {}", duration(model.uptime_ns))),
        Span::raw(format!(
            "  new {:.1}/s  closed {:.1}/s  retx {:.1}/s  resets {:.1}/s",
            model.rates.new, model.rates.closed, model.rates.retransmits, model.rates.resets
        )),
    ];
    let alarm = |text: String, n: usize| {
        if n > 0 {
            Span::styled(
                text,
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            )
        } else {
            Span::raw(text)
        }
    };
    first.push(alarm(
        format!("  lost {}", model.lost),
        usize::from(model.lost > 0),
    ));
    let firing = model.firing();
    first.push(alarm(format!("  firing {firing}"), firing));
    if ui.paused {
        first.push(Span::styled(
            "  PAUSED",
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    let counts = model.state_counts();
    let mut second = format!("{} sockets:", model.conns.len());
    for (state, n) in &counts {
        let _ = write!(second, " {state} {n}");
    }
    Paragraph::new(vec![Line::from(first), Line::raw(second)])
}

fn tab_line(ui: &Ui) -> Line<'static> {
    let mut spans = Vec::new();
    for (i, &t) in Tab::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, t.label());
        spans.push(if ui.tab == t {
            Span::styled(label, Style::new().add_modifier(Modifier::REVERSED))
        } else {
            Span::raw(label)
        });
        spans.push(Span::raw(" "));
    }
    let (col, rev) = ui.sort();
    spans.push(Span::raw(format!(
        "  sort: {} {}   filter: {}",
        ui.tab.columns().get(col).copied().unwrap_or("?"),
        if rev { "desc" } else { "asc" },
        if ui.filter_text.is_empty() {
            "-"
        } else {
            &ui.filter_text
        }
    )));
    Line::from(spans)
}

pub(super) fn column_header(names: &[&'static str], col: usize, rev: bool) -> Row<'static> {
    Row::new(names.iter().enumerate().map(|(i, n)| {
        if i == col {
            format!("{n}{}", if rev { "▼" } else { "▲" })
        } else {
            (*n).to_owned()
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

pub(super) fn highlight(row: Row<'static>, selected: bool) -> Row<'static> {
    if selected {
        row.style(Style::new().add_modifier(Modifier::REVERSED))
    } else {
        row
    }
}

fn conn_row(c: &Conn, selected: bool) -> Row<'static> {
    let opt = |v: Option<u64>, f: fn(u64) -> String| v.map_or_else(|| "-".to_owned(), f);
    let row = Row::new(vec![
        c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        if c.comm.is_empty() {
            "-".to_owned()
        } else {
            c.comm.clone()
        },
        c.local.to_string(),
        c.remote.to_string(),
        c.state_name().to_owned(),
        opt(c.age_ns, duration),
        opt(c.in_state_ns, duration),
        opt(c.bytes_in, bytes),
        opt(c.bytes_out, bytes),
        opt(c.rtt_us.map(u64::from), rtt),
        c.retransmits
            .map_or_else(|| "-".to_owned(), |r| r.to_string()),
        c.tls_version().unwrap_or("-").to_owned(),
        c.sni().unwrap_or("-").to_owned(),
    ]);
    let row = match c.state_name() {
        "CLOSE_WAIT" => row.style(Style::new().fg(Color::Yellow)),
        _ if c.retransmits.unwrap_or(0) > 0 => row.style(Style::new().fg(Color::Magenta)),
        _ => row,
    };
    highlight(row, selected)
}

fn proc_row(p: &Proc, selected: bool) -> Row<'static> {
    let row = Row::new(vec![
        p.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        if p.comm.is_empty() {
            "-".to_owned()
        } else {
            p.comm.clone()
        },
        p.total.to_string(),
        format!("{:.1}", p.new_per_s),
        p.established.to_string(),
        p.listen.to_string(),
        p.close_wait.to_string(),
        p.time_wait.to_string(),
        p.other.to_string(),
        p.retransmits.to_string(),
        bytes(p.bytes_in + p.bytes_out),
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a non-negative rate, shown rounded"
        )]
        bytes(p.bytes_per_s.round() as u64),
    ]);
    highlight(row, selected)
}

fn footer(ui: &Ui) -> Line<'static> {
    match &ui.editing {
        Some(text) => Line::raw(format!(
            "/{text}_   (port: sport: dport: pid: comm: state: addr: or words; Enter applies, Esc cancels)"
        )),
        None => Line::raw(
            "q quit  ? help  1-4/Tab view  </> sort column  r reverse  / filter  p pause  Enter detail",
        ),
    }
}

const HELP: &[&str] = &[
    "1-4, Tab    Connections, Processes, Anomalies, Listeners",
    "< >  ← →     sort by the previous/next column",
    "r            reverse the sort",
    "/            filter: port:N sport:N dport:N pid:N comm:X",
    "             state:X addr:X, or bare words (all must match)",
    "             (Anomalies: pid comm port addr, state:firing)",
    "Esc          close the detail pane, else clear the filter",
    "p, space     pause the display (capture goes on)",
    "↑ ↓ PgUp PgDn Home End   select",
    "Enter        detail pane of the selected connection",
    "             (Anomalies: the selected alert's pane is always open)",
    "q, Ctrl-C    quit",
];

fn help(frame: &mut Frame) {
    let area = frame.area();
    let w = 64.min(area.width);
    let h = (u16::try_from(HELP.len()).unwrap_or(u16::MAX) + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP.iter().map(|l| Line::raw(*l)).collect::<Vec<_>>())
            .block(Block::bordered().title(" help (any key closes) ")),
        popup,
    );
}

/// "850ms", "12s", "5m03s", "3h07m", "2d04h".
#[must_use]
pub fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{}ms", ns / 1_000_000),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "512", "1.5K", "20M", "3.1G" (powers of 1024).
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "a display rounded to 2 digits")]
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// A smoothed RTT in µs as "85µs" or "1.2ms".
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "a display rounded to 1 digit")]
pub fn rtt(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}
