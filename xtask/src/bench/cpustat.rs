//! Where the CPU time went while the loop ran, from the `cpuN` lines of /proc/stat.

use std::fs;

use anyhow::{Context as _, Result};

/// Fractions of the elapsed time of the generator's CPU and of the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Busy {
    /// The generator's CPU: not idle and not stolen.
    pub generator_cpu: f64,
    /// The generator's CPU: stolen by the hypervisor (the vCPU did not run at all).
    pub generator_steal: f64,
    /// The other CPUs' mean: not idle and not stolen.
    pub other_cpus: f64,
    /// How many other CPUs there are.
    pub others: usize,
}

/// Jiffies of one CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticks {
    busy: u64,
    steal: u64,
    total: u64,
}

/// Every CPU's jiffies, indexed by CPU number.
pub fn sample() -> Result<Vec<Ticks>> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    Ok(parse(&stat))
}

fn parse(stat: &str) -> Vec<Ticks> {
    let cpus = stat.lines().filter(|l| {
        l.strip_prefix("cpu")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    cpus.map(|line| {
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let t: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| t.get(i).copied().unwrap_or(0);
        Ticks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
            total: t.iter().sum(),
        }
    })
    .collect()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "jiffy counts stay far below 2^52"
)]
pub fn busy(before: &[Ticks], after: &[Ticks], generator: usize) -> Busy {
    let delta = |cpu: usize| {
        let (b, a) = (before.get(cpu).copied()?, after.get(cpu).copied()?);
        let total = a.total.saturating_sub(b.total);
        (total > 0).then(|| {
            let fraction = |x: u64, y: u64| x.saturating_sub(y) as f64 / total as f64;
            (fraction(a.busy, b.busy), fraction(a.steal, b.steal))
        })
    };
    let others: Vec<f64> = (0..after.len())
        .filter(|&c| c != generator)
        .filter_map(|c| Some(delta(c)?.0))
        .collect();
    let (generator_cpu, generator_steal) = delta(generator).unwrap_or_default();
    Busy {
        generator_cpu,
        generator_steal,
        others: others.len(),
        other_cpus: if others.is_empty() {
            0.0
        } else {
            others.iter().sum::<f64>() / others.len() as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_busy_steal_and_idle() {
        let before =
            parse("cpu  1 1 1 1 1 1 1 1 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0\n");
        let after = parse(
            "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 50 0 30 0 0 0 10 10 5 0\ncpu1 10 0 10 80 0 0 0 0\n",
        );
        let busy = busy(&before, &after, 0);
        assert!((busy.generator_cpu - 0.9).abs() < 1e-9);
        assert!((busy.generator_steal - 0.1).abs() < 1e-9);
        assert!((busy.other_cpus - 0.2).abs() < 1e-9);
    }
}
