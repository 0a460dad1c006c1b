//! Zeek's connection vocabulary (`conn_state`, `history`) and observer's close summary
//! (`close_initiator`, `close_reason`), derived from one socket's kernel lifecycle.
//!
//! A socket sees its own state changes, not packets, so only what those imply is claimed; the
//! mapping and its limits are in docs/lifecycle.md. Letters follow Zeek: uppercase for the
//! originator (the end that sent the SYN), lowercase for the responder.

use observer_common::tcp_state::{CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, LAST_ACK};

use super::{lifecycle::Lifecycle, record::Role};

/// What one socket knows about how its connection went.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent observed facts, read by table-driven rules"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// This socket is the originator (a client); false for a responder.
    pub local_is_orig: bool,
    /// First seen mid-life: the handshake was not observed.
    pub pre_existing: bool,
    pub established: bool,
    /// Payload bytes each side sent.
    pub orig_bytes: u64,
    pub resp_bytes: u64,
    /// Data retransmissions by this socket.
    pub local_retransmits: u32,
    /// This socket sent its FIN, and whether it did so before the peer's FIN arrived.
    pub local_fin: bool,
    pub peer_fin: bool,
    pub local_fin_first: bool,
    /// Both FINs crossed (`FIN_WAIT1` → `CLOSING`).
    pub simultaneous: bool,
    pub resets_sent: u32,
    pub resets_received: u32,
    /// `sk_err` at close.
    pub sk_err: i32,
    /// Still open (periodic updates).
    pub open: bool,
}

impl Facts {
    /// What the lifecycle and counters say.
    #[must_use]
    pub fn from_lifecycle(role: Role, pre_existing: bool, lc: &Lifecycle) -> Self {
        let steps = lc.steps();
        let first_of = |state| steps.iter().position(|s| s.state == state);
        let fin_wait1 = first_of(FIN_WAIT1);
        let close_wait = first_of(CLOSE_WAIT);
        let local_fin = fin_wait1.is_some() || first_of(LAST_ACK).is_some();
        let peer_fin = close_wait.is_some() || first_of(CLOSING).is_some() || lc.fin_received;
        Self {
            // With the role unknown, the record treats the local end as the originator.
            local_is_orig: role != Role::Server,
            pre_existing,
            established: lc.reached(ESTABLISHED) || (pre_existing && lc.first_state == ESTABLISHED),
            local_fin,
            peer_fin,
            local_fin_first: match (fin_wait1, close_wait) {
                (Some(_), None) => true,
                (Some(f), Some(c)) => f < c,
                _ => false,
            },
            simultaneous: first_of(CLOSING).is_some(),
            ..Self::default()
        }
    }

    fn orig_fin(&self) -> bool {
        if self.local_is_orig {
            self.local_fin
        } else {
            self.peer_fin
        }
    }

    fn resp_fin(&self) -> bool {
        if self.local_is_orig {
            self.peer_fin
        } else {
            self.local_fin
        }
    }

    fn orig_rst(&self) -> bool {
        if self.local_is_orig {
            self.resets_sent > 0
        } else {
            self.resets_received > 0
        }
    }

    fn resp_rst(&self) -> bool {
        if self.local_is_orig {
            self.resets_received > 0
        } else {
            self.resets_sent > 0
        }
    }
}

/// Zeek's `conn_state`.
#[must_use]
pub fn conn_state(f: &Facts) -> &'static str {
    if f.pre_existing && !f.established {
        return "OTH";
    }
    if !f.established {
        // Only a client sees an unanswered or refused SYN: a server socket exists only once
        // the handshake completed.
        return match (f.resp_rst(), f.orig_rst()) {
            (true, _) => "REJ",
            (false, true) => "RSTOS0",
            (false, false) => "S0",
        };
    }
    if f.orig_rst() {
        return "RSTO";
    }
    if f.resp_rst() {
        return "RSTR";
    }
    if f.open && !f.orig_fin() && !f.resp_fin() {
        return "S1";
    }
    match (f.orig_fin(), f.resp_fin()) {
        (true, true) => "SF",
        (true, false) => "S2",
        (false, true) => "S3",
        (false, false) if f.pre_existing => "OTH",
        (false, false) => "S1",
    }
}

/// A history string, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    letters: [u8; 24],
    len: u8,
}

impl History {
    fn push(&mut self, letter: char) {
        if let (Some(slot), Ok(b)) = (
            self.letters.get_mut(usize::from(self.len)),
            u8::try_from(letter),
        ) {
            *slot = b;
            self.len += 1;
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.letters[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Zeek's `history`: the letters this socket can vouch for, in order.
#[must_use]
pub fn history(f: &Facts) -> History {
    let mut h = History {
        letters: [0; 24],
        len: 0,
    };
    let push = |h: &mut History, orig: bool, letter: char| {
        h.push(if orig {
            letter.to_ascii_uppercase()
        } else {
            letter
        });
    };
    if !f.pre_existing {
        h.push('S');
        if f.established {
            h.push('h');
            h.push('A');
        }
    }
    if f.orig_bytes > 0 {
        h.push('D');
    }
    if f.resp_bytes > 0 {
        h.push('d');
    }
    // Retransmitted payload, logarithmically: once, then at 10, 100, …
    let n = f.local_retransmits;
    let mut step = 1;
    while n >= step {
        push(&mut h, f.local_is_orig, 't');
        step = step.saturating_mul(10);
        if step == u32::MAX {
            break;
        }
    }
    let local_first = f.local_fin_first || (f.local_fin && !f.peer_fin);
    let (first, second) = if local_first {
        (
            (f.local_fin, f.local_is_orig),
            (f.peer_fin, !f.local_is_orig),
        )
    } else {
        (
            (f.peer_fin, !f.local_is_orig),
            (f.local_fin, f.local_is_orig),
        )
    };
    for (fin, orig) in [first, second] {
        if fin {
            push(&mut h, orig, 'f');
        }
    }
    if f.orig_rst() {
        h.push('R');
    }
    if f.resp_rst() {
        h.push('r');
    }
    h
}

/// Who closed first: `local`, `remote`, `simultaneous` or `none`.
#[must_use]
pub fn close_initiator(f: &Facts) -> &'static str {
    if f.open {
        "none"
    } else if f.simultaneous {
        "simultaneous"
    } else if f.local_fin_first || (f.local_fin && !f.peer_fin) {
        "local"
    } else if f.peer_fin {
        "remote"
    } else if f.resets_sent > 0 {
        "local"
    } else if f.resets_received > 0 {
        "remote"
    } else {
        "none"
    }
}

/// Why it ended: `fin`, `rst_sent`, `rst_received`, `refused`, `timeout`, `unreachable`, or
/// `open` for a connection still open.
#[must_use]
pub fn close_reason(f: &Facts) -> &'static str {
    match f.sk_err {
        _ if f.open => "open",
        libc::ECONNREFUSED => "refused",
        libc::ETIMEDOUT => "timeout",
        libc::EHOSTUNREACH | libc::ENETUNREACH => "unreachable",
        _ if f.resets_received > 0 => "rst_received",
        _ if f.resets_sent > 0 => "rst_sent",
        _ => "fin",
    }
}

#[cfg(test)]
mod tests;
