//! The Anomalies view's read model: the detectors' alerts folded into one row per rule and
//! subject, firing or recently resolved. Nothing is detected here: a row says what its latest
//! alert said (reason, evidence), and when it fired and resolved.

use crate::detect::{Alert, Status, Subject};

/// A resolved alert stays on screen this long after it resolved.
pub const RESOLVED_KEPT_NS: u64 = 15 * 60 * 1_000_000_000;
/// At most this many resolved alerts are kept (the oldest go first).
pub const RESOLVED_KEPT: usize = 100;

/// One rule firing, or recently resolved, for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// The latest alert: its reason and evidence are shown.
    pub alert: Alert,
    /// When it started firing; `None` when only its resolution was seen.
    pub fired_ns: Option<u64>,
    pub resolved_ns: Option<u64>,
}

impl Anomaly {
    #[must_use]
    pub fn firing(&self) -> bool {
        self.resolved_ns.is_none()
    }

    /// The time of its latest change.
    #[must_use]
    pub fn changed_ns(&self) -> u64 {
        self.resolved_ns
            .or(self.fired_ns)
            .unwrap_or(self.alert.ts_ns)
    }
}

/// Every alert seen since start, folded.
#[derive(Debug, Clone, Default)]
pub struct AlertLog {
    rows: Vec<Anomaly>,
}

fn same(a: &Alert, rule: &str, subject: &Subject) -> bool {
    a.rule == rule && a.subject == *subject
}

impl AlertLog {
    /// One alert, in the order the detectors raised them.
    pub fn push(&mut self, alert: Alert) {
        let open = self
            .rows
            .iter_mut()
            .find(|r| r.firing() && same(&r.alert, alert.rule, &alert.subject));
        match (alert.status, open) {
            (Status::Firing, Some(row)) => row.alert = alert,
            (Status::Firing, None) => self.rows.push(Anomaly {
                fired_ns: Some(alert.ts_ns),
                resolved_ns: None,
                alert,
            }),
            (Status::Resolved, Some(row)) => {
                row.resolved_ns = Some(alert.ts_ns);
                row.alert = alert;
            }
            (Status::Resolved, None) => self.rows.push(Anomaly {
                fired_ns: None,
                resolved_ns: Some(alert.ts_ns),
                alert,
            }),
        }
    }

    /// Forgets what resolved long enough before `now_ns`, and the oldest resolved beyond
    /// [`RESOLVED_KEPT`].
    pub fn expire(&mut self, now_ns: u64) {
        self.rows.retain(|r| {
            r.resolved_ns
                .is_none_or(|t| t.saturating_add(RESOLVED_KEPT_NS) > now_ns)
        });
        let mut resolved: Vec<(u64, usize)> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.resolved_ns?, i)))
            .collect();
        if resolved.len() > RESOLVED_KEPT {
            resolved.sort_unstable();
            let mut gone: Vec<usize> = resolved[..resolved.len() - RESOLVED_KEPT]
                .iter()
                .map(|&(_, i)| i)
                .collect();
            gone.sort_unstable();
            for i in gone.into_iter().rev() {
                self.rows.remove(i);
            }
        }
    }

    #[must_use]
    pub fn rows(&self) -> &[Anomaly] {
        &self.rows
    }
}
