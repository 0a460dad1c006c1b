//! `close_wait_stuck`, per process: sockets that stayed in `CLOSE_WAIT` longer than a threshold.
//! The peer closed and the process never called `close()`: a descriptor leak, or a worker
//! stuck before its cleanup. Only the owner can end a `CLOSE_WAIT`: the kernel never times it
//! out. The rule itself is `stuck::Rule`.

pub use super::stuck::Config;
use super::stuck::{Kind, Rule};

pub const DEFAULT_AFTER_S: u64 = 60;
pub const DEFAULT_MIN: u64 = 1;

impl Default for Config {
    fn default() -> Self {
        Self {
            after_s: DEFAULT_AFTER_S,
            min: DEFAULT_MIN,
        }
    }
}

#[must_use]
pub fn rule(config: Config) -> Rule {
    Rule::new(Kind::CloseWait, config)
}
