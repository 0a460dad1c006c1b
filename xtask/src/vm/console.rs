//! Reading a guest's serial console: the markers `/init` prints, libtest's per-test lines, the
//! `observer check` table, and kernel lines that mean trouble (panic, BUG, Oops, WARNING).

use super::MARK;

/// What libtest said about one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Ignored,
    /// Started and never finished: the binary crashed, or the guest died or timed out.
    Unfinished,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "FAILED",
            Self::Ignored => "ignored",
            Self::Unfinished => "UNFINISHED",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        match word.trim() {
            "ok" => Some(Self::Ok),
            "FAILED" => Some(Self::Failed),
            w if w == "ignored" || w.starts_with("ignored,") => Some(Self::Ignored),
            _ => None,
        }
    }
}

/// `test NAME ... RESULT` (RESULT may be missing when the test wrote to stderr before it
/// ended: libtest then prints it on a line of its own).
pub fn test_line(line: &str) -> Option<(&str, Option<Outcome>)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    if name.contains(' ') {
        return None;
    }
    Some((name, Outcome::parse(result)))
}

/// One test executable's run in the guest.
#[derive(Debug, Default)]
pub struct Binary {
    pub name: String,
    pub exit: Option<i32>,
    pub tests: Vec<(String, Outcome)>,
}

/// Everything a console says.
#[derive(Debug, Default)]
pub struct Report {
    /// `uname -r` in the guest.
    pub kernel: Option<String>,
    pub check: Vec<String>,
    pub check_exit: Option<i32>,
    pub binaries: Vec<Binary>,
    /// `/init` reached its end.
    pub done: bool,
    pub modprobe_failed: Vec<String>,
    /// Kernel lines that mean a bug or a crash.
    pub kernel_trouble: Vec<String>,
    /// `OBSERVER-SKIPPED` markers and libtest's `N ignored`.
    pub skipped: u64,
    pub ignored: u64,
}

impl Report {
    pub fn parse(console: &str) -> Self {
        let mut report = Self::default();
        let mut in_check = false;
        let mut pending: Option<String> = None;
        for raw in console.lines() {
            let line = raw.trim_end_matches('\r');
            // A kernel message can land in the middle of a test's line: keep what precedes it.
            let line = match kernel_text(line) {
                Some((before, text)) => {
                    if is_trouble(text) {
                        report.kernel_trouble.push(text.to_owned());
                    }
                    before
                }
                None => line,
            };
            if line.trim().is_empty() && !in_check {
                continue;
            }
            if let Some(at) = line.find(MARK) {
                let marker = line[at + MARK.len()..].trim();
                report.marker(marker, &mut in_check, &mut pending);
                continue;
            }
            if in_check {
                report.check.push(line.to_owned());
                continue;
            }
            report.test_output(line, &mut pending);
        }
        report.finish(&mut pending);
        report
    }

    fn marker(&mut self, marker: &str, in_check: &mut bool, pending: &mut Option<String>) {
        let (word, rest) = marker.split_once(' ').unwrap_or((marker, ""));
        match word {
            "kernel" => self.kernel = Some(rest.to_owned()),
            "modprobe-failed" => self.modprobe_failed.push(rest.to_owned()),
            "check-begin" => *in_check = true,
            "check-end" => {
                *in_check = false;
                self.check_exit = exit_of(rest);
                while self.check.last().is_some_and(|l| l.trim().is_empty()) {
                    self.check.pop();
                }
            }
            "binary-begin" => self.binaries.push(Binary {
                name: rest.to_owned(),
                ..Binary::default()
            }),
            "binary-end" => {
                self.finish(pending);
                if let Some(binary) = self.binaries.last_mut() {
                    binary.exit = exit_of(rest);
                }
            }
            "done" => self.done = true,
            _ => {}
        }
    }

    fn test_output(&mut self, line: &str, pending: &mut Option<String>) {
        if line.contains("OBSERVER-SKIPPED") {
            self.skipped += 1;
        }
        if line.starts_with("test result:") {
            self.ignored += crate::test::ignored_count(line);
        }
        let Some(binary) = self.binaries.last_mut() else {
            return;
        };
        if let Some((name, outcome)) = test_line(line) {
            match outcome {
                Some(outcome) => binary.tests.push((name.to_owned(), outcome)),
                None => *pending = Some(name.to_owned()),
            }
        } else if let Some(name) = pending.as_ref()
            && let Some(outcome) = Outcome::parse(line)
        {
            binary.tests.push((name.clone(), outcome));
            *pending = None;
        }
    }

    fn finish(&mut self, pending: &mut Option<String>) {
        if let (Some(name), Some(binary)) = (pending.take(), self.binaries.last_mut()) {
            binary.tests.push((name, Outcome::Unfinished));
        }
    }

    /// Every reason this guest run failed, empty when it passed. Skips and ignores count only
    /// when `strict` (on CI), as on the host.
    pub fn problems(&self, strict: bool) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.kernel_trouble
                .iter()
                .map(|line| format!("kernel: {line}")),
        );
        out.extend(
            self.modprobe_failed
                .iter()
                .map(|m| format!("modprobe {m} failed")),
        );
        if self.check_exit != Some(0) {
            out.push(format!(
                "`observer check` exited with {}",
                self.check_exit
                    .map_or_else(|| "nothing (it never finished)".into(), |c| c.to_string())
            ));
        }
        for binary in &self.binaries {
            for (test, outcome) in &binary.tests {
                if matches!(outcome, Outcome::Failed | Outcome::Unfinished) {
                    out.push(format!("{}::{test} {}", binary.name, outcome.label()));
                }
            }
            match binary.exit {
                Some(0) => {}
                Some(code) => out.push(format!("{} exited with {code}", binary.name)),
                None => out.push(format!("{} never finished", binary.name)),
            }
        }
        if self.binaries.is_empty() {
            out.push("no test executable ran".into());
        }
        if !self.done {
            out.push("the guest stopped before /init finished".into());
        }
        if strict && self.skipped > 0 {
            out.push(format!(
                "{} tests were skipped (OBSERVER-SKIPPED); CI requires every one to run",
                self.skipped
            ));
        }
        if strict && self.ignored > 0 {
            out.push(format!(
                "{} tests were ignored; CI requires every one to run",
                self.ignored
            ));
        }
        out
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.binaries
            .iter()
            .flat_map(|b| &b.tests)
            .filter(|(_, o)| *o == outcome)
            .count()
    }
}

/// libtest's `---- NAME stdout ----` sections of every failed test, each up to the next
/// section or libtest's `failures:` list, so a failure's message survives a long console.
pub fn failure_sections(console: &str) -> Vec<Vec<String>> {
    let mut sections: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        let header = line.starts_with("---- ") && line.ends_with(" stdout ----");
        if header {
            sections.push(vec![line.to_owned()]);
            open = true;
        } else if open && (line == "failures:" || line.contains(MARK)) {
            open = false;
        } else if open {
            sections.last_mut().expect("opened").push(line.to_owned());
        }
    }
    for section in &mut sections {
        while section.last().is_some_and(|l| l.trim().is_empty()) {
            section.pop();
        }
    }
    sections
}

fn exit_of(rest: &str) -> Option<i32> {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix("exit="))
        .and_then(|c| c.parse().ok())
}

/// What precedes a kernel message (`[   12.345678] message`) in a console line, and the
/// message.
fn kernel_text(line: &str) -> Option<(&str, &str)> {
    let mut from = 0;
    while let Some(open) = line[from..].find('[').map(|i| from + i) {
        let after = &line[open + 1..];
        if let Some(close) = after.find("] ") {
            let stamp = after[..close].trim_start();
            let mut parts = stamp.split('.');
            let digits = |s: Option<&str>| {
                s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            };
            if digits(parts.next()) && digits(parts.next()) && parts.next().is_none() {
                return Some((&line[..open], &after[close + 2..]));
            }
        }
        from = open + 1;
    }
    None
}

fn is_trouble(text: &str) -> bool {
    [
        "Kernel panic",
        "BUG:",
        "Oops",
        "WARNING: CPU:",
        "general protection fault",
    ]
    .iter()
    .any(|pattern| text.contains(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> String {
        [
            "c\x1b[?7l\x1b[2J@@OBSERVER-VM kernel 6.1.0-56-cloud-amd64\r",
            "@@OBSERVER-VM check-begin",
            "CHECK       STATUS  DETAIL",
            "privileges  ok      euid 0",
            "",
            "observer can run on this host.",
            "",
            "@@OBSERVER-VM check-end exit=0",
            "@@OBSERVER-VM binary-begin cli",
            "",
            "running 2 tests",
            "test bad_input ... ok",
            "test version ... FAILED",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured",
            "@@OBSERVER-VM binary-end cli exit=101",
            "@@OBSERVER-VM binary-begin pipeline",
            "test many_sockets ... Traceback (most recent call last):",
            "OSError: [Errno 24] Too many open files",
            "FAILED",
            "test slow_one ... [   99.120000] sysrq: Power Off",
        ]
        .join("\n")
    }

    #[test]
    fn reads_markers_tests_and_check() {
        let r = Report::parse(&console());
        assert_eq!(r.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(r.check_exit, Some(0));
        assert_eq!(r.check.len(), 4);
        assert_eq!(r.check[3], "observer can run on this host.");
        assert_eq!(r.binaries.len(), 2);
        assert_eq!(
            r.binaries[0].tests,
            [
                ("bad_input".to_owned(), Outcome::Ok),
                ("version".to_owned(), Outcome::Failed)
            ]
        );
        assert_eq!(r.binaries[0].exit, Some(101));
        // A result after the test's own stderr, and a test the guest never finished.
        assert_eq!(
            r.binaries[1].tests,
            [
                ("many_sockets".to_owned(), Outcome::Failed),
                ("slow_one".to_owned(), Outcome::Unfinished)
            ]
        );
        assert!(!r.done);
        let problems = r.problems(true);
        assert!(problems.contains(&"cli::version FAILED".to_owned()));
        assert!(problems.contains(&"pipeline::slow_one UNFINISHED".to_owned()));
        assert!(problems.contains(&"pipeline never finished".to_owned()));
        assert!(problems.contains(&"the guest stopped before /init finished".to_owned()));
    }

    #[test]
    fn a_clean_run_has_no_problems_and_a_panic_is_one() {
        let clean = "@@OBSERVER-VM check-begin\n@@OBSERVER-VM check-end exit=0\n\
                     @@OBSERVER-VM binary-begin cli\ntest a ... ok\n\
                     test result: ok. 1 passed; 0 failed; 0 ignored\n\
                     @@OBSERVER-VM binary-end cli exit=0\n@@OBSERVER-VM done\n";
        assert!(Report::parse(clean).problems(true).is_empty());
        let panicked =
            format!("{clean}[   12.5] Kernel panic - not syncing: Attempted to kill init!\n");
        assert_eq!(
            Report::parse(&panicked).problems(true),
            ["kernel: Kernel panic - not syncing: Attempted to kill init!"]
        );
    }

    #[test]
    fn skips_fail_only_when_strict() {
        let text = "@@OBSERVER-VM check-begin\n@@OBSERVER-VM check-end exit=0\n\
                    @@OBSERVER-VM binary-begin cli\nOBSERVER-SKIPPED: a needs root\n\
                    test a ... ok\ntest result: ok. 1 passed; 0 failed; 2 ignored\n\
                    @@OBSERVER-VM binary-end cli exit=0\n@@OBSERVER-VM done\n";
        let r = Report::parse(text);
        assert_eq!((r.skipped, r.ignored), (1, 2));
        assert!(r.problems(false).is_empty());
        assert_eq!(r.problems(true).len(), 2);
    }

    #[test]
    fn failure_sections_keep_each_failed_tests_message() {
        let text = "test a ... FAILED\ntest b ... FAILED\n\nfailures:\n\n\
                    ---- a stdout ----\r\nthread 'a' panicked at x.rs:1:2:\n3001 records\n\n\
                    ---- b stdout ----\nthread 'b' panicked\n\nfailures:\n    a\n    b\n\n\
                    test result: FAILED. 0 passed; 2 failed\n\
                    ---- c stdout ----\nleft open\n@@OBSERVER-VM binary-end x exit=101\nafter\n";
        assert_eq!(
            failure_sections(text),
            [
                vec![
                    "---- a stdout ----",
                    "thread 'a' panicked at x.rs:1:2:",
                    "3001 records"
                ],
                vec!["---- b stdout ----", "thread 'b' panicked"],
                vec!["---- c stdout ----", "left open"],
            ]
        );
        assert!(failure_sections("test a ... ok\n").is_empty());
    }

    #[test]
    fn kernel_lines_are_recognised_anywhere() {
        assert_eq!(kernel_text("[    1.507946] Trying"), Some(("", "Trying")));
        assert_eq!(
            kernel_text("test x ... [ 9.1] BUG: oops"),
            Some(("test x ... ", "BUG: oops"))
        );
        assert_eq!(kernel_text("[Errno 24] Too many"), None);
        assert_eq!(kernel_text("test a ... ok"), None);
    }
}
