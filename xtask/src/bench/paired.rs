//! `cargo xtask bench churn --paired`: observer's cost measured against itself paused, in short
//! alternating windows of one continuous run, so that the VM's drifting speed cancels out.
//!
//! One namespace, one observer process, one generator thread that never stops. The main thread
//! (pinned next to observer, away from the generator) pauses observer with SIGUSR1 (every eBPF
//! program detached) and resumes it with SIGUSR2, waits for each toggle's confirmation line in
//! observer's output, lets the machine settle and then counts the connections of one window.
//! Windows follow the ABBA schedule of [`stats::active`]; each pair's ratio compares two
//! neighbouring windows, a few hundred milliseconds apart.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Netns,
    churn::{self, Generator},
    cpustat::{self, Busy},
    reader::Reader,
    remove_stale_netns, report,
    stats::{self, Pair, Toggle, Window},
    tracer::{self, Tracer},
    warn_foreign_tracers,
};
use crate::{bootstrap, workspace};

/// Pause between a toggle's confirmation (or the previous window) and the next window.
const SETTLE: Duration = Duration::from_millis(20);
/// How long observer may take to confirm a pause or resume.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(1);
/// Pairs dropped at the start: the generator and the caches warm up.
const WARM_UP_PAIRS: usize = 1;

pub fn run(seconds: u64, window_ms: u64, tcp_sink: bool) -> Result<()> {
    if seconds == 0 || window_ms == 0 {
        bail!("--seconds and --window-ms must be at least 1");
    }
    let tools = bootstrap::run(false)?;
    let observer = workspace::build_observer(&tools)?;
    let dir = workspace::target_dir(&tools)?.join("bench-churn");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_netns();
    let netns = Netns::create(1)?;
    churn::in_netns(&netns.path, churn::configure)?;
    println!(
        "## Connection churn, paired: observer attached vs paused, {window_ms} ms windows for \
         {seconds} s\n"
    );
    println!("{}", report::machine());
    println!(
        "generator: one thread pinned to CPU {} in network namespace {}; observer and the \
         control loop pinned to CPU {}; ABBA windows, {} ms settle before each.",
        churn::CPU,
        netns.name,
        tracer::TRACER_CPU,
        SETTLE.as_millis()
    );
    println!("tracer output: {}\n", dir.display());
    warn_foreign_tracers();

    // A second output, to a reader on loopback: what a log pipeline's socket source costs.
    let reader = tcp_sink.then(Reader::start).transpose()?;
    let extra: Vec<String> = reader
        .iter()
        .flat_map(|r| ["--sink".to_owned(), r.url.clone()])
        .collect();
    if let Some(r) = &reader {
        println!(
            "with a second output: --sink {} (a reader in xtask counting lines)\n",
            r.url
        );
    }
    let mut tracer = Tracer::observer(&observer, &netns.path, &dir, &extra)?;
    let mut watch = Watch::open(tracer.output())?;
    churn::pin_to(tracer::TRACER_CPU).context("cannot pin the control loop")?;
    let before = cpustat::sample()?;
    let generator = churn::in_netns(&netns.path, Generator::start)?;
    eprintln!("[bench] paired: {seconds} s of {window_ms} ms windows");
    let control = Control {
        tracer: &mut tracer,
        watch: &mut watch,
        generator: &generator,
        window: Duration::from_millis(window_ms),
    };
    let measured = control.alternate(Duration::from_secs(seconds));
    let (conns, _) = generator.finish()?;
    let (windows, toggles) = measured?;
    let busy = cpustat::busy(&before, &cpustat::sample()?, churn::CPU);
    let stopped = tracer.stop()?;
    let stats = stopped.observer(0.0)?;
    if let Some(reader) = reader {
        let file_lines = stopped.stdout.lines().count();
        let got = reader.finish(Duration::from_millis(500));
        println!(
            "tcp output: the reader got {got} lines, the file output has {file_lines} \
             (equal when the tcp output dropped nothing)\n"
        );
    }
    write_windows(&dir.join("paired-windows.tsv"), &windows)?;

    let pairs = stats::pairs(&windows, WARM_UP_PAIRS);
    let (low, high) = stats::active_conns(&toggles, conns);
    print_summary(&windows, &pairs, &toggles, busy);
    println!(
        "observer: {} connection records; the generator made {conns} connections, {low}–{high} \
         of them while observer was attached (2 × that = {}–{}; connections that straddle a \
         toggle may be partial or missing): information, not a floor",
        stats.records,
        2 * low,
        2 * high
    );
    check(stats::median(&ratios(&pairs)), stats.lost)
}

struct Control<'a> {
    tracer: &'a mut Tracer,
    watch: &'a mut Watch,
    generator: &'a Generator,
    window: Duration,
}

impl Control<'_> {
    /// Measures windows in ABBA order until `duration` has passed and the last pair is complete.
    fn alternate(mut self, duration: Duration) -> Result<(Vec<Window>, Vec<Toggle>)> {
        let start = Instant::now();
        let mut windows = Vec::new();
        let mut toggles = Vec::new();
        let mut attached = true;
        for i in 0.. {
            if i % 2 == 0 && start.elapsed() >= duration {
                break;
            }
            let active = stats::active(i);
            if active != attached {
                toggles.push(self.toggle(active)?);
                attached = active;
            }
            thread::sleep(SETTLE);
            let (t0, c0) = (Instant::now(), self.generator.count());
            thread::sleep(self.window);
            let (t1, c1) = (Instant::now(), self.generator.count());
            if !self.generator.running() {
                bail!("the churn thread stopped early");
            }
            windows.push(Window {
                active,
                conns: c1 - c0,
                secs: (t1 - t0).as_secs_f64(),
            });
        }
        Ok((windows, toggles))
    }

    /// Pauses or resumes observer and waits for its confirmation line.
    fn toggle(&mut self, to_active: bool) -> Result<Toggle> {
        let (signal, action) = if to_active {
            (libc::SIGUSR2, "resumed")
        } else {
            (libc::SIGUSR1, "paused")
        };
        self.watch.mark()?;
        let sent = self.generator.count();
        self.tracer.signal(signal)?;
        let start = Instant::now();
        loop {
            if let Some(line) = self.watch.find(action)? {
                if to_active == line.contains(r#""hooks":[]"#) {
                    bail!("observer {action}, but its hooks say otherwise: {line}");
                }
                return Ok(Toggle {
                    to_active,
                    sent,
                    confirmed: self.generator.count(),
                    latency: start.elapsed(),
                });
            }
            if start.elapsed() >= CONFIRM_WAIT {
                bail!("observer did not confirm \"{action}\" within {CONFIRM_WAIT:?}");
            }
            thread::sleep(POLL);
        }
    }
}

/// Follows observer's output from a mark on, looking for an agent line.
struct Watch {
    file: File,
    pos: u64,
    pending: Vec<u8>,
}

impl Watch {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            file,
            pos: 0,
            pending: Vec::new(),
        })
    }

    /// Skips what the file holds now: a line written after this call starts at or after the
    /// current end (the file is only appended to).
    fn mark(&mut self) -> Result<()> {
        self.pos = self.file.metadata()?.len();
        self.pending.clear();
        Ok(())
    }

    /// The first complete agent line with `action` written since the mark, if there is one yet.
    fn find(&mut self, action: &str) -> Result<Option<String>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let read = self.file.read_to_end(&mut self.pending)?;
        self.pos += read as u64;
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(None);
        };
        let complete: Vec<u8> = self.pending.drain(..=end).collect();
        let text = String::from_utf8_lossy(&complete);
        Ok(text
            .lines()
            .find(|line| confirms(line, action))
            .map(str::to_owned))
    }
}

/// Whether `line` is observer's agent record for `action`.
fn confirms(line: &str, action: &str) -> bool {
    line.contains(r#""dataset":"observer.agent""#)
        && line.contains(&format!(r#""action":"{action}""#))
}

fn ratios(pairs: &[Pair]) -> Vec<f64> {
    pairs.iter().map(Pair::ratio).collect()
}

fn print_summary(windows: &[Window], pairs: &[Pair], toggles: &[Toggle], busy: Busy) {
    let all = ratios(pairs);
    let first = |active_first: bool| -> Vec<f64> {
        let of: Vec<Pair> = pairs
            .iter()
            .filter(|p| p.active_first == active_first)
            .copied()
            .collect();
        ratios(&of)
    };
    let rates = |active: bool| -> Option<f64> {
        stats::mean(
            &pairs
                .iter()
                .map(|p| if active { p.active } else { p.paused })
                .collect::<Vec<_>>(),
        )
    };
    let latency = |to_active: bool| -> Option<f64> {
        let ms: Vec<f64> = toggles
            .iter()
            .filter(|t| t.to_active == to_active)
            .map(|t| t.latency.as_secs_f64() * 1e3)
            .collect();
        stats::median(&ms)
    };
    let num = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
    };
    let (lo, hi) = all
        .iter()
        .fold((f64::NAN, f64::NAN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (ra, rp) = (rates(true), rates(false));
    let overhead = ra.zip(rp).map(|(a, p)| (1.0 / a - 1.0 / p) * 1e6);
    let mut table = String::new();
    let mut row = |name: &str, value: String| {
        let _ = writeln!(table, "| {name} | {value} |");
    };
    row(
        "pairs used",
        format!(
            "{} of {} (the first {WARM_UP_PAIRS} discarded)",
            pairs.len(),
            windows.len() / 2
        ),
    );
    row("conn/s attached, mean of windows", num(ra, 0));
    row("conn/s paused, mean of windows", num(rp, 0));
    row(
        "**attached/paused per pair: median**",
        format!("**{}**", num(stats::median(&all), 4)),
    );
    row(
        "95% CI of the median (order statistics)",
        stats::median_ci(&all).map_or_else(
            || "– (too few pairs)".to_owned(),
            |(l, h)| format!("{l:.4} – {h:.4}"),
        ),
    );
    row("mean of the ratios", num(stats::mean(&all), 4));
    row("min – max of the ratios", format!("{lo:.4} – {hi:.4}"));
    row(
        "median, pairs attached first / paused first",
        format!(
            "{} / {}",
            num(stats::median(&first(true)), 4),
            num(stats::median(&first(false)), 4)
        ),
    );
    row(
        "overhead per connection, (1/attached − 1/paused)",
        format!("{} µs", num(overhead, 2)),
    );
    row(
        "toggle latency, median pause / resume",
        format!("{} / {} ms", num(latency(false), 1), num(latency(true), 1)),
    );
    row(
        "CPU 0 busy / stolen; other CPUs busy",
        format!(
            "{:.0}% / {:.1}%; {:.0}%",
            busy.generator_cpu * 100.0,
            busy.generator_steal * 100.0,
            busy.other_cpus * 100.0
        ),
    );
    println!("| | |\n|---|---:|\n{table}");
}

fn write_windows(path: &Path, windows: &[Window]) -> Result<()> {
    let mut text = String::from("window\tstate\tconnections\tseconds\tconn_per_s\n");
    for (i, w) in windows.iter().enumerate() {
        let state = if w.active { "attached" } else { "paused" };
        let _ = writeln!(
            text,
            "{i}\t{state}\t{}\t{:.6}\t{:.1}",
            w.conns,
            w.secs,
            w.rate()
        );
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The floors: the median ratio and zero loss.
fn check(median: Option<f64>, lost: u64) -> Result<()> {
    let mut failed = Vec::new();
    match median {
        Some(r) => {
            let verdict = if r >= report::MIN_RATIO {
                "ok"
            } else {
                "FAILED"
            };
            println!(
                "floor: observer attached/paused, median of per-pair ratios = {r:.4} (must be ≥ {}): {verdict}",
                report::MIN_RATIO
            );
            if r < report::MIN_RATIO {
                failed.push(format!(
                    "attached/paused = {r:.4} is below {}",
                    report::MIN_RATIO
                ));
            }
        }
        None => failed.push("no complete pair was measured: raise --seconds".to_owned()),
    }
    let verdict = if lost == 0 { "ok" } else { "FAILED" };
    println!("floor: observer lost {lost} events (ring_full + map_full; must be 0): {verdict}");
    if lost > 0 {
        failed.push(format!("observer lost {lost} events"));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("benchmark floor failed: {}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_confirmations() {
        let line = r#"{"event":{"kind":"event","dataset":"observer.agent","action":"paused"},"observer":{"hooks":[]}}"#;
        assert!(confirms(line, "paused"));
        assert!(!confirms(line, "resumed"));
        assert!(!confirms(
            r#"{"event":{"dataset":"observer.connection","action":"paused"}}"#,
            "paused"
        ));
    }

    #[test]
    fn watch_sees_only_complete_lines_after_the_mark() -> Result<()> {
        use std::io::Write as _;
        let path = std::env::temp_dir().join(format!("xtask-watch-{}.ndjson", std::process::id()));
        let agent = |action: &str| {
            format!(r#"{{"event":{{"dataset":"observer.agent","action":"{action}"}}}}"#)
        };
        let mut out = File::create(&path)?;
        writeln!(out, "{}", agent("paused"))?;
        let mut watch = Watch::open(&path)?;
        watch.mark()?;
        assert_eq!(watch.find("paused")?, None);
        write!(out, "{{\"conn\":1}}\n{}", agent("paused"))?;
        assert_eq!(watch.find("paused")?, None, "the line is not complete yet");
        writeln!(out)?;
        assert_eq!(watch.find("paused")?, Some(agent("paused")));
        fs::remove_file(&path)?;
        Ok(())
    }
}
