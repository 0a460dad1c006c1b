//! The Anomalies view: a row per alert (firing first), and below, the selected alert's reason
//! and evidence in full.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table, Wrap},
};
use serde_json::Value;

use super::{
    alerts::Anomaly,
    input::Ui,
    model::Model,
    select::{self, ALERT_COLUMNS},
    view::{column_header, duration, highlight, window},
};
use crate::{detect::Subject, track::record::Uid};

const WIDTHS: [Constraint; 9] = [
    Constraint::Length(9),
    // The longest rule name: tls_handshake_failures.
    Constraint::Length(22),
    Constraint::Length(6),
    Constraint::Length(7),
    Constraint::Length(15),
    Constraint::Length(22),
    Constraint::Length(8),
    Constraint::Length(8),
    Constraint::Min(10),
];

/// Draws the table and, when there is one, the selected alert's pane.
pub fn draw(frame: &mut Frame, model: &Model, ui: &mut Ui, area: Rect) {
    let (col, rev) = ui.sort();
    let rows = select::anomalies(&model.anomalies, &ui.filter, col, rev);
    ui.selected = ui.selected.min(rows.len().saturating_sub(1));
    let selected = rows.get(ui.selected).copied();
    let pane = selected.map(|a| pane_lines(a, model.now_ns));
    let inner = usize::from(area.width.saturating_sub(2)).max(1);
    // Borders, and each line as wrapped at the pane's width.
    let height = pane.as_ref().map_or(0, |lines| {
        2 + lines
            .iter()
            .map(|l| l.width().max(1).div_ceil(inner))
            .sum::<usize>()
    });
    let height = u16::try_from(height)
        .unwrap_or(u16::MAX)
        .min(area.height / 2);
    let [table_area, pane_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(height)]).areas(area);
    let shown = window(&rows, ui.selected, table_area.height);
    let table = Table::new(
        shown
            .iter()
            .map(|(i, a)| row(a, model.now_ns, *i == ui.selected)),
        WIDTHS,
    )
    .header(column_header(&ALERT_COLUMNS, col, rev));
    frame.render_widget(table, table_area);
    if rows.is_empty() {
        let none = if model.anomalies.is_empty() {
            "no alert since start"
        } else {
            "no alert matches the filter"
        };
        let y = table_area.y + 1;
        if y < table_area.bottom() {
            frame.render_widget(
                Line::raw(none),
                Rect::new(table_area.x, y, table_area.width, 1),
            );
        }
    } else if let Some(lines) = pane {
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(Block::bordered().title(" alert ")),
            pane_area,
        );
    }
}

fn row(a: &Anomaly, now_ns: u64, selected: bool) -> Row<'static> {
    let x = &a.alert;
    let (pid, comm) = x.subject.process.map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |p| (p.pid.to_string(), p.name().to_owned()),
    );
    let row = Row::new(vec![
        if a.firing() { "FIRING" } else { "resolved" }.to_owned(),
        x.rule.to_owned(),
        severity(x.severity).to_owned(),
        pid,
        comm,
        destination(&x.subject),
        a.fired_ns
            .map_or_else(|| "-".to_owned(), |t| duration(now_ns.saturating_sub(t))),
        format!("{}/{}", x.observed, x.threshold),
        x.reason.clone(),
    ]);
    let row = if a.firing() {
        row.style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
    } else {
        row.style(Style::new().fg(Color::DarkGray))
    };
    highlight(row, selected)
}

fn severity(s: u8) -> &'static str {
    match s {
        0..=2 => "low",
        3 => "medium",
        _ => "high",
    }
}

/// "10.0.0.7:80", "10.0.0.7" for a whole host, "-" for none.
fn destination(s: &Subject) -> String {
    match s.destination {
        Some((ip, 0)) => ip.to_string(),
        Some((ip, port)) => std::net::SocketAddr::new(ip, port).to_string(),
        None => "-".to_owned(),
    }
}

/// An evidence value as a person reads it: strings bare, lists comma-separated.
fn value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn pane_lines(a: &Anomaly, now_ns: u64) -> Vec<Line<'static>> {
    let x = &a.alert;
    let ago = |t: u64| format!("{} ago", duration(now_ns.saturating_sub(t)));
    let mut when = match a.fired_ns {
        Some(t) => format!("fired {}", ago(t)),
        None => "fired before the view started".to_owned(),
    };
    if let Some(t) = a.resolved_ns {
        when = format!("{when}, resolved {}", ago(t));
    }
    let subject = match (&x.subject.process, x.subject.destination) {
        (Some(p), Some(_)) => format!("{} (pid {}) → {}", p.name(), p.pid, destination(&x.subject)),
        (Some(p), None) => format!("{} (pid {})", p.name(), p.pid),
        (None, Some(_)) => destination(&x.subject),
        (None, None) => "the observer".to_owned(),
    };
    let netns = x
        .subject
        .netns
        .map_or_else(String::new, |n| format!("  netns {n}"));
    let mut lines = vec![
        Line::raw(format!(
            "{} {} — {subject}{netns} — {when}",
            x.rule,
            if a.firing() { "FIRING" } else { "resolved" },
        )),
        Line::raw(format!("reason: {}", x.reason)),
        Line::raw(format!(
            "observed {}  threshold {}  window {}s",
            x.observed, x.threshold, x.window_s
        )),
    ];
    let evidence: Vec<String> = x
        .evidence
        .iter()
        .map(|(k, v)| format!("{k}: {}", value(v)))
        .collect();
    if !evidence.is_empty() {
        lines.push(Line::raw(format!("evidence: {}", evidence.join("  "))));
    }
    if !x.samples.is_empty() {
        let uids: Vec<&str> = x.samples.iter().map(Uid::as_str).collect();
        lines.push(Line::raw(format!("connections: {}", uids.join(" "))));
    }
    lines
}
