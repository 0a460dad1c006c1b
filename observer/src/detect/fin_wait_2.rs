//! `fin_wait_2_stuck`, per process: sockets that stayed in `FIN_WAIT2` longer than a threshold.
//! The process shut down its writing side (`shutdown(SHUT_WR)`), the peer acknowledged the FIN
//! and never sent its own: a peer that hangs, or a protocol that waits on the wrong side. The
//! kernel times out only orphaned `FIN_WAIT2` sockets (closed by their process, after
//! `tcp_fin_timeout`); one the process still holds waits forever. The rule itself is
//! `stuck::Rule`.

pub use super::stuck::Config;
use super::stuck::{Kind, Rule};

/// `tcp_fin_timeout`'s default: the kernel gives an orphan this long to see the peer's FIN.
pub const DEFAULT_AFTER_S: u64 = 60;
pub const DEFAULT_MIN: u64 = 1;

#[must_use]
pub fn rule(config: Config) -> Rule {
    Rule::new(Kind::FinWait2, config)
}
