//! What the keys do: the view's state (tab, sort, filter, selection, panes), changed only here.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::select::{ALERT_COLUMNS, CONN_COLUMNS, Filter, PROC_COLUMNS};

/// The views. A new one is a variant here, an entry in [`Tab::ALL`] (its number key is its
/// place there), its columns, and its arm in `view::draw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Connections,
    Processes,
    Anomalies,
    Listeners,
}

impl Tab {
    /// Every view, in tab order.
    pub const ALL: [Tab; 4] = [
        Tab::Connections,
        Tab::Processes,
        Tab::Anomalies,
        Tab::Listeners,
    ];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Tab::Connections => "Connections",
            Tab::Processes => "Processes",
            Tab::Anomalies => "Anomalies",
            Tab::Listeners => "Listeners",
        }
    }

    /// The view's column titles, in screen order.
    #[must_use]
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Tab::Connections => &CONN_COLUMNS,
            Tab::Processes => &PROC_COLUMNS,
            Tab::Anomalies => &ALERT_COLUMNS,
            Tab::Listeners => &super::listeners::LISTEN_COLUMNS,
        }
    }

    /// The sort a view starts with: (column, reversed).
    fn default_sort(self) -> (usize, bool) {
        match self {
            // By state, then address: by age, newest first, would hide the old.
            Tab::Connections => (4, false),
            // Most connections first.
            Tab::Processes => (2, true),
            // Anomalies: firing before resolved, then newest first. Listeners: by address.
            Tab::Anomalies | Tab::Listeners => (0, false),
        }
    }

    /// Its place in [`Tab::ALL`].
    #[must_use]
    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|&t| t == self).unwrap_or(0)
    }

    fn step(self, by: usize) -> Tab {
        Tab::ALL[(self.index() + by) % Tab::ALL.len()]
    }
}

/// The state of the screen, apart from the data.
#[derive(Debug, Clone)]
pub struct Ui {
    pub tab: Tab,
    /// Sort column per tab (in [`Tab::ALL`] order), and whether it is reversed.
    pub sort: [(usize, bool); Tab::ALL.len()],
    /// The filter being typed (after `/`), or `None`.
    pub editing: Option<String>,
    pub filter_text: String,
    pub filter: Filter,
    pub paused: bool,
    pub detail: bool,
    pub help: bool,
    /// The selected row of the current view (an index into its sorted, filtered rows).
    pub selected: usize,
}

impl Default for Ui {
    fn default() -> Self {
        Self {
            tab: Tab::Connections,
            sort: Tab::ALL.map(Tab::default_sort),
            editing: None,
            filter_text: String::new(),
            filter: Filter::default(),
            paused: false,
            detail: false,
            help: false,
            selected: 0,
        }
    }
}

/// Keys from raw terminal bytes, for the few that `observer top` uses: printable characters,
/// Enter, Tab, Backspace, Esc, Ctrl-C and the arrow and paging keys; anything else is skipped.
/// Only for bytes crossterm left unread (see `term::Screen::input`).
#[must_use]
pub fn keys_of(bytes: &[u8]) -> Vec<KeyEvent> {
    let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let (code, used) = match rest {
            [0x1b, b'[', b'A', ..] => (Some(KeyCode::Up), 3),
            [0x1b, b'[', b'B', ..] => (Some(KeyCode::Down), 3),
            [0x1b, b'[', b'C', ..] => (Some(KeyCode::Right), 3),
            [0x1b, b'[', b'D', ..] => (Some(KeyCode::Left), 3),
            [0x1b, b'[', b'H', ..] => (Some(KeyCode::Home), 3),
            [0x1b, b'[', b'F', ..] => (Some(KeyCode::End), 3),
            [0x1b, b'[', b'Z', ..] => (Some(KeyCode::BackTab), 3),
            [0x1b, b'[', b'5', b'~', ..] => (Some(KeyCode::PageUp), 4),
            [0x1b, b'[', b'6', b'~', ..] => (Some(KeyCode::PageDown), 4),
            // Some other sequence: skip to its final byte.
            [0x1b, b'[', tail @ ..] => (
                None,
                2 + tail
                    .iter()
                    .position(|b| (0x40..=0x7e).contains(b))
                    .map_or(tail.len(), |p| p + 1),
            ),
            [0x1b, ..] => (Some(KeyCode::Esc), 1),
            [b'\r' | b'\n', ..] => (Some(KeyCode::Enter), 1),
            [b'\t', ..] => (Some(KeyCode::Tab), 1),
            [0x7f | 0x08, ..] => (Some(KeyCode::Backspace), 1),
            [3, ..] => {
                out.push(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
                (None, 1)
            }
            [c @ 0x20..=0x7e, ..] => (Some(KeyCode::Char(char::from(*c))), 1),
            _ => (None, 1),
        };
        if let Some(code) = code {
            out.push(key(code));
        }
        i += used;
    }
    out
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

impl Ui {
    #[must_use]
    pub fn sort(&self) -> (usize, bool) {
        self.sort[self.tab.index()]
    }

    /// Applies one key press.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter_text = std::mem::take(text);
                    self.filter = Filter::parse(&self.filter_text);
                    self.editing = None;
                    self.selected = 0;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => return Action::None,
            }
            return Action::Redraw;
        }
        if self.help {
            self.help = false;
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                _ => Action::Redraw,
            };
        }
        let columns = self.tab.columns().len();
        let (col, rev) = &mut self.sort[self.tab.index()];
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char(c @ '1'..='9') => {
                let n = usize::from(c as u8 - b'1');
                match Tab::ALL.get(n) {
                    Some(&tab) => self.switch(tab),
                    None => return Action::None,
                }
            }
            KeyCode::Tab => self.switch(self.tab.step(1)),
            KeyCode::BackTab => self.switch(self.tab.step(Tab::ALL.len() - 1)),
            KeyCode::Char('>' | '.') | KeyCode::Right => *col = (*col + 1) % columns,
            KeyCode::Char('<' | ',') | KeyCode::Left => *col = (*col + columns - 1) % columns,
            KeyCode::Char('r') => *rev = !*rev,
            KeyCode::Char('/') => self.editing = Some(self.filter_text.clone()),
            KeyCode::Esc => {
                if self.detail {
                    self.detail = false;
                } else {
                    self.filter_text.clear();
                    self.filter = Filter::default();
                }
            }
            KeyCode::Char('p' | ' ') => self.paused = !self.paused,
            KeyCode::Enter => self.detail = !self.detail,
            KeyCode::Char('?' | 'h') => self.help = true,
            KeyCode::Down | KeyCode::Char('j') => self.selected = self.selected.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = self.selected.saturating_add(20),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(20),
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected = usize::MAX,
            _ => return Action::None,
        }
        Action::Redraw
    }

    fn switch(&mut self, tab: Tab) {
        self.tab = tab;
        self.selected = 0;
        self.detail = false;
    }
}
