//! What the keys do: the view's state (tab, sort, filter, selection, panes), changed only here.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::select::{CONN_COLUMNS, Filter, PROC_COLUMNS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Connections,
    Processes,
    Listeners,
}

impl Tab {
    #[must_use]
    pub fn columns(self) -> usize {
        match self {
            Tab::Connections => CONN_COLUMNS.len(),
            Tab::Processes => PROC_COLUMNS.len(),
            Tab::Listeners => super::listeners::LISTEN_COLUMNS.len(),
        }
    }
}

/// The state of the screen, apart from the data.
#[derive(Debug, Clone)]
pub struct Ui {
    pub tab: Tab,
    /// Sort column per tab, and whether it is reversed.
    pub sort: [(usize, bool); 3],
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
            // Connections by age, newest first would hide the old; by state, then address.
            // Listeners by address.
            sort: [(4, false), (2, true), (0, false)],
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
        self.sort[self.tab as usize]
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
        let columns = self.tab.columns();
        let (col, rev) = &mut self.sort[self.tab as usize];
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('1') => self.switch(Tab::Connections),
            KeyCode::Char('2') => self.switch(Tab::Processes),
            KeyCode::Char('3') => self.switch(Tab::Listeners),
            KeyCode::Tab | KeyCode::BackTab => self.switch(match self.tab {
                Tab::Connections => Tab::Processes,
                Tab::Processes => Tab::Listeners,
                Tab::Listeners => Tab::Connections,
            }),
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
