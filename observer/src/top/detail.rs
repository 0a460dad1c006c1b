//! The Connections view's detail pane (Enter): who owns the connection, its lifecycle timeline
//! with the time of each transition, its TLS handshake, and its counters.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph},
};

use super::{
    model::{Conn, Model},
    view::{bytes, duration, rtt},
};
use crate::{
    sink::timefmt::Rfc3339,
    tls::{TlsFacts, names},
    track::lifecycle::state_name,
};

/// The pane's lines: the header (ends, owner), the timeline and the TLS handshake side by
/// side, and the counters.
pub struct Pane {
    head: Vec<Line<'static>>,
    timeline: Vec<Line<'static>>,
    tls: Vec<Line<'static>>,
    counters: Line<'static>,
}

impl Pane {
    #[must_use]
    pub fn of(c: &Conn, model: &Model) -> Self {
        let opt = |v: Option<u64>, f: fn(u64) -> String| v.map_or_else(|| "-".to_owned(), f);
        let head = vec![
            Line::raw(format!(
                "{} → {}  {} for {}, {} {} ago",
                c.local,
                c.remote,
                c.state_name(),
                opt(c.in_state_ns, duration),
                if c.pre_existing { "first seen" } else { "born" },
                opt(
                    c.age_ns
                        .or_else(|| c.birth_ns.map(|b| model.now_ns.saturating_sub(b))),
                    duration
                ),
            )),
            Line::raw(format!(
                "owner {} {} ({})  exe {}  uid {}  cookie {:#x}",
                c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                if c.comm.is_empty() { "-" } else { &c.comm },
                c.owner_source.unwrap_or("unknown"),
                c.executable.as_deref().unwrap_or("-"),
                c.uid,
                c.cookie,
            )),
        ];
        let (sent, received) = c.resets.unwrap_or((0, 0));
        let counters = Line::raw(format!(
            "rx {}  tx {}  segs out/in {}  rtt {}  retransmits {}  resets sent/received {}",
            opt(c.bytes_in, bytes),
            opt(c.bytes_out, bytes),
            c.segs
                .map_or_else(|| "-".to_owned(), |(o, i)| format!("{o}/{i}")),
            opt(c.rtt_us.map(u64::from), rtt),
            c.retransmits
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            c.resets
                .map_or_else(|| "-".to_owned(), |_| format!("{sent}/{received}")),
        ));
        Self {
            head,
            timeline: timeline(c, model),
            tls: tls(c.tls.as_ref()),
            counters,
        }
    }

    /// Rows the pane needs, borders included.
    #[must_use]
    pub fn height(&self) -> u16 {
        let rows = self.head.len() + self.timeline.len().max(self.tls.len()) + 1 + 2;
        u16::try_from(rows).unwrap_or(u16::MAX)
    }

    pub fn draw(self, frame: &mut Frame, area: Rect) {
        let block = Block::bordered().title(" detail (Enter/Esc closes) ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let middle = u16::try_from(self.timeline.len().max(self.tls.len())).unwrap_or(u16::MAX);
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(u16::try_from(self.head.len()).unwrap_or(u16::MAX)),
            Constraint::Length(middle),
            Constraint::Length(1),
        ])
        .areas(inner);
        let [left, right] =
            Layout::horizontal([Constraint::Length(46), Constraint::Min(10)]).areas(body);
        frame.render_widget(Paragraph::new(self.head), head);
        frame.render_widget(Paragraph::new(self.timeline), left);
        frame.render_widget(Paragraph::new(self.tls), right);
        frame.render_widget(Paragraph::new(self.counters), foot);
    }
}

fn title(text: &'static str) -> Line<'static> {
    Line::styled(text, Style::new().add_modifier(Modifier::BOLD))
}

/// "08:10:02.514" (UTC) for a `CLOCK_BOOTTIME` time.
fn clock(ts_ns: u64, boot_to_unix_ns: i64) -> String {
    let unix = i64::try_from(ts_ns)
        .unwrap_or(i64::MAX)
        .saturating_add(boot_to_unix_ns);
    Rfc3339::from_unix_ns(unix).as_str()[11..23].to_owned()
}

/// "+0µs", "+850µs", "+1.2ms", "+3s", "+2m05s": the time since birth.
fn offset(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("+{}µs", ns / 1000),
        1_000_000..1_000_000_000 => format!("+{}.{}ms", ns / 1_000_000, ns / 100_000 % 10),
        _ => format!("+{}", duration(ns)),
    }
}

fn timeline(c: &Conn, model: &Model) -> Vec<Line<'static>> {
    let mut lines = vec![title("lifecycle (UTC)")];
    let Some(lc) = &c.lifecycle else {
        lines.push(Line::raw("no transitions recorded: the kernel"));
        lines.push(Line::raw("does not track this socket"));
        return lines;
    };
    let birth = c.birth_ns.unwrap_or(0);
    let at = |ts: u64| clock(ts, model.boot_to_unix_ns);
    lines.push(Line::raw(format!(
        "{}  {:>8}  {} {}",
        at(birth),
        "",
        if c.pre_existing {
            "first seen in"
        } else {
            "born from"
        },
        state_name(lc.first_state)
    )));
    let steps = lc.steps();
    for (i, step) in steps.iter().enumerate() {
        // The kernel keeps the first transitions and the latest: say where some were lost.
        if lc.truncated > 0 && i + 1 == steps.len() {
            lines.push(Line::raw(format!(
                "{:12}  {:>8}  … {} more not kept",
                "", "", lc.truncated
            )));
        }
        let mut line = format!(
            "{}  {:>8}  {}",
            at(step.ts_ns),
            offset(step.ts_ns.saturating_sub(birth)),
            state_name(step.state)
        );
        if i + 1 == steps.len() && step.state == c.state {
            line.push_str(" (now)");
        }
        lines.push(Line::raw(line));
    }
    lines
}

fn tls(facts: Option<&TlsFacts>) -> Vec<Line<'static>> {
    let mut lines = vec![title("TLS handshake")];
    let Some(f) = facts else {
        lines.push(Line::raw("none seen (`--tls` watches handshakes)"));
        return lines;
    };
    let version = f
        .version
        .and_then(names::version)
        .map_or_else(|| "version unknown".to_owned(), |v| format!("TLS {v}"));
    let outcome = match (&f.error, f.established) {
        (Some(e), _) => format!("failed: {e}"),
        (None, true) => "established".to_owned(),
        (None, false) => "in progress".to_owned(),
    };
    lines.push(Line::raw(format!(
        "{version}, {outcome}{}",
        f.role
            .map_or_else(String::new, |r| format!(", as {}", r.as_str()))
    )));
    let field = |name: &str, value: String| Line::raw(format!("{name:<12} {value}"));
    if let Some(sni) = &f.server_name {
        lines.push(field("server name", sni.clone()));
    }
    if f.next_protocol.is_some() || !f.alpn_offered.is_empty() {
        lines.push(field(
            "ALPN",
            format!(
                "{} (offered {})",
                f.next_protocol.as_deref().unwrap_or("-"),
                if f.alpn_offered.is_empty() {
                    "-".to_owned()
                } else {
                    f.alpn_offered.join(", ")
                }
            ),
        ));
    }
    if let Some(cipher) = f.cipher {
        lines.push(field("cipher", names::cipher(cipher)));
    }
    if let Some(curve) = f.curve {
        lines.push(field("group", names::group(curve)));
    }
    if let Some(resumed) = f.resumed {
        lines.push(field(
            "resumed",
            if resumed { "yes" } else { "no" }.to_owned(),
        ));
    }
    let took = f.handshake_duration_us.map_or_else(|| "-".to_owned(), rtt);
    lines.push(field(
        "took",
        format!(
            "{took}  ({}{})",
            f.source,
            f.library
                .as_deref()
                .map_or_else(String::new, |l| format!(", {l}"))
        ),
    ));
    lines
}
