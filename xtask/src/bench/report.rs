//! The benchmark's tables (Markdown, so they paste into BENCHMARKS.md) and its floors.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Result, bail};

use super::{Mode, Run, churn};

/// observer's connection rate must stay at or above this fraction of the untraced rate.
pub const MIN_RATIO: f64 = 0.95;
/// Busy time on the other CPUs beyond the tracer's own CPU time, above which a run is flagged:
/// some other workload shared the machine.
const FOREIGN_LOAD: f64 = 0.15;

pub fn preamble(seconds: u64, rounds: u32, netns: &str, dir: &Path) {
    println!("## Connection churn: {rounds} rounds of {seconds} s per mode\n");
    println!("{}", machine());
    println!(
        "generator: client and server threads pinned to CPU {cpu} in a fresh network namespace per run ({netns}); \
         the tracers' userspace is not pinned and runs mostly on the other CPU(s).",
        cpu = churn::CPU
    );
    println!("tracer output: {}\n", dir.display());
}

/// The CPU model, CPU count and kernel release.
pub fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: {model}, {cpus} CPUs, kernel {}", kernel.trim())
}

pub fn round(number: u32, runs: &[Run]) {
    let none = rate_of(runs, Mode::None);
    let order: Vec<&str> = Mode::order(number - 1).iter().map(|m| m.name()).collect();
    println!("### Round {number} (order: {})\n", order.join(", "));
    println!(
        "| mode | conn/s | connections | vs none | connection records | 2 × connections | \
         events delivered | lost | tracer CPU µs/conn | CPU {cpu} busy | CPU {cpu} stolen | \
         other CPUs busy |",
        cpu = churn::CPU
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs {
        let mut line = format!(
            "| {} | {:.0} | {} | {} |",
            run.mode.name(),
            run.rate(),
            run.counted.conns,
            ratio(run.rate(), none)
        );
        match run.tracer {
            None => line.push_str(" – | – | – | – | – |"),
            Some(t) => {
                let flag = if t.records == 2 * run.counted.conns {
                    ""
                } else {
                    " ≠"
                };
                let _ = write!(
                    line,
                    " {}{flag} | {} | {} | {} | {:.2} |",
                    t.records,
                    2 * run.counted.conns,
                    t.delivered,
                    t.lost,
                    per_conn_us(t.cpu_secs, run.counted.conns)
                );
            }
        }
        let busy = run.counted.busy;
        let _ = write!(
            line,
            " {:.0}% | {:.1}% | {:.0}% |",
            busy.generator_cpu * 100.0,
            busy.generator_steal * 100.0,
            busy.other_cpus * 100.0
        );
        println!("{line}");
    }
    println!();
    for run in runs {
        let foreign = foreign_load(run);
        if foreign > FOREIGN_LOAD {
            println!(
                "warning: during the {} run the other CPUs were {:.0}% busy beyond the tracer's own \
                 CPU time: another workload shared the machine, so this round is unreliable\n",
                run.mode.name(),
                foreign * 100.0
            );
        }
    }
}

/// The other CPUs' busy fraction not explained by the tracer's CPU time (which may also have
/// run on the generator's CPU, so this errs low).
#[expect(clippy::cast_precision_loss, reason = "a CPU count")]
fn foreign_load(run: &Run) -> f64 {
    let busy = run.counted.busy;
    let capacity = busy.others as f64 * run.counted.secs;
    if capacity <= 0.0 {
        return 0.0;
    }
    let tracer = run.tracer.map_or(0.0, |t| t.cpu_secs);
    (busy.other_cpus * capacity - tracer).max(0.0) / capacity
}

/// Prints the summary over all rounds; fails when observer misses a floor.
pub fn summary(rounds: &[Vec<Run>]) -> Result<()> {
    let runs_of =
        |mode: Mode| -> Vec<&Run> { rounds.iter().flatten().filter(|r| r.mode == mode).collect() };
    let none = mean(&runs_of(Mode::None));
    println!("### Summary over {} rounds\n", rounds.len());
    println!(
        "| mode | conn/s mean | conn/s min – max | vs none (means) | vs none per round, min – median – max | \
         events delivered | lost | tracer CPU µs/conn |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in Mode::ALL {
        let runs = runs_of(mode);
        let (low, high) = min_max(runs.iter().map(|r| r.rate()));
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|round| Some(rate_of(round, mode)? / rate_of(round, Mode::None)?))
            .collect();
        let (rlow, rhigh) = min_max(per_round.iter().copied());
        let rmid = median(per_round).unwrap_or(0.0);
        let mut line = format!(
            "| {} | {:.0} | {low:.0} – {high:.0} | {} | {rlow:.3} – {rmid:.3} – {rhigh:.3} |",
            mode.name(),
            mean(&runs).unwrap_or(0.0),
            ratio(mean(&runs).unwrap_or(0.0), none),
        );
        let stats: Vec<_> = runs.iter().filter_map(|r| r.tracer).collect();
        if stats.is_empty() {
            line.push_str(" – | – | – |");
        } else {
            let conns: u64 = runs.iter().map(|r| r.counted.conns).sum();
            let _ = write!(
                line,
                " {} | {} | {:.2} |",
                stats.iter().map(|s| s.delivered).sum::<u64>(),
                stats.iter().map(|s| s.lost).sum::<u64>(),
                per_conn_us(stats.iter().map(|s| s.cpu_secs).sum(), conns)
            );
        }
        println!("{line}");
    }
    println!();
    let busy_runs = rounds
        .iter()
        .flatten()
        .filter(|r| foreign_load(r) > FOREIGN_LOAD)
        .count();
    if busy_runs > 0 {
        println!(
            "warning: {busy_runs} runs shared the machine with another workload (see the rounds); \
             rerun on an idle machine before trusting these numbers\n"
        );
    }
    let paired: Vec<f64> = rounds
        .iter()
        .filter_map(|round| Some(rate_of(round, Mode::Observer)? / rate_of(round, Mode::None)?))
        .collect();
    check(&runs_of(Mode::Observer), median(paired))
}

/// The median of per-round ratios. Each round runs the modes back to back, so a ratio within a
/// round cancels the slow drift of this VM's speed, and the median ignores the odd disturbed
/// round; the ratio of overall means does neither.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    })
}

fn check(observer: &[&Run], paired: Option<f64>) -> Result<()> {
    for (i, run) in observer.iter().enumerate() {
        let Some(t) = run.tracer else { continue };
        let expected = 2 * run.counted.conns;
        let verdict = if t.records == expected {
            "ok"
        } else {
            "MISMATCH"
        };
        println!(
            "observer run {}: {} connection records, the generator counted {} connections \
             (expected {expected} records): {verdict}",
            i + 1,
            t.records,
            run.counted.conns
        );
    }
    let mut failed = Vec::new();
    if let Some(r) = paired {
        let verdict = if r >= MIN_RATIO { "ok" } else { "FAILED" };
        println!(
            "floor: observer/none, median of per-round ratios = {r:.3} (must be ≥ {MIN_RATIO}): {verdict}"
        );
        if r < MIN_RATIO {
            failed.push(format!("observer/none = {r:.3} is below {MIN_RATIO}"));
        }
    }
    let lost: u64 = observer
        .iter()
        .filter_map(|r| r.tracer)
        .map(|t| t.lost)
        .sum();
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

fn rate_of(runs: &[Run], mode: Mode) -> Option<f64> {
    runs.iter().find(|r| r.mode == mode).map(Run::rate)
}

#[expect(clippy::cast_precision_loss, reason = "a handful of rounds")]
fn mean(runs: &[&Run]) -> Option<f64> {
    (!runs.is_empty()).then(|| runs.iter().map(|r| r.rate()).sum::<f64>() / runs.len() as f64)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn ratio(value: f64, base: Option<f64>) -> String {
    base.map_or_else(|| "–".to_owned(), |b| format!("{:.3}", value / b))
}

#[expect(
    clippy::cast_precision_loss,
    reason = "connection counts stay far below 2^52"
)]
fn per_conn_us(cpu_secs: f64, conns: u64) -> f64 {
    if conns == 0 {
        0.0
    } else {
        cpu_secs * 1e6 / conns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{churn::Counted, cpustat::Busy, tracer::Stats};

    fn run(mode: Mode, conns: u64, lost: u64) -> Run {
        let tracer = (mode != Mode::None).then_some(Stats {
            records: 2 * conns,
            delivered: 16 * conns,
            lost,
            cpu_secs: 0.1,
        });
        Run {
            mode,
            counted: Counted {
                conns,
                secs: 1.0,
                busy: Busy::default(),
            },
            tracer,
        }
    }

    #[test]
    fn floors() {
        let round = |obs, lost| vec![run(Mode::None, 1000, 0), run(Mode::Observer, obs, lost)];
        assert!(summary(&[round(960, 0), round(990, 0)]).is_ok());
        assert!(summary(&[round(900, 0), round(960, 0)]).is_err());
        assert!(summary(&[round(1000, 1)]).is_err());
    }

    #[test]
    fn foreign_load_discounts_the_tracer() {
        let mut traced = run(Mode::Observer, 1000, 0);
        traced.counted.busy = Busy {
            other_cpus: 0.5,
            others: 1,
            ..Busy::default()
        };
        assert!((foreign_load(&traced) - 0.4).abs() < 1e-9);
        traced.counted.busy.others = 0;
        assert!(foreign_load(&traced).abs() < 1e-9);
    }

    #[test]
    fn min_max_ignores_nothing() {
        assert_eq!(min_max([3.0, 1.0, 2.0].into_iter()), (1.0, 3.0));
    }
}
