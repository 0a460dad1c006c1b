//! `cargo xtask bench sinks`: how fast records go through each kind of output. A churn is
//! recorded once (`run --record`), then replayed (`observer replay`, which waits for a slow
//! output instead of dropping) into each output in turn; records/s is what came out the far
//! end divided by the replay's wall time. The pipeline alone (replay to a file on disk) is the
//! limit: an output whose figure matches it costs the agent nothing it can measure.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Netns, churn, reader::Reader, remove_stale_netns, report, tracer::Tracer};
use crate::{bootstrap, cmd, workspace};

/// Replays of each output, the median reported.
const REPEATS: usize = 5;

pub fn run(seconds: u64) -> Result<()> {
    let tools = bootstrap::run(false)?;
    let observer = workspace::build_observer(&tools)?;
    let dir = workspace::target_dir(&tools)?.join("bench-sinks");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_netns();
    let netns = Netns::create(1)?;
    churn::in_netns(&netns.path, churn::configure)?;
    let recording = dir.join("churn.rec");
    let _ = fs::remove_file(&recording);
    let rec = recording.to_string_lossy().into_owned();
    let tracer = Tracer::observer(&observer, &netns.path, &dir, &["--record".to_owned(), rec])?;
    let duration = Duration::from_secs(seconds);
    churn::in_netns(&netns.path, move || churn::run(duration))?;
    let records = tracer.stop()?.observer(0.0)?.records;
    println!("## Output throughput: `observer replay` of a recorded churn into each output\n");
    println!("{}", report::machine());
    println!(
        "recording: {records} connection records from {seconds} s of churn; each replay {REPEATS} \
         times, the median shown\n"
    );
    println!("| output | lines | replay s (median) | lines/s | vs a file |");
    println!("|---|---:|---:|---:|---:|");
    let file = dir.join("replay.ndjson");
    let mut baseline = None;
    for kind in ["file", "tcp", "file+tcp"] {
        let mut times = Vec::new();
        let mut lines = 0;
        for _ in 0..REPEATS {
            let _ = fs::remove_file(&file);
            let reader = kind.contains("tcp").then(Reader::start).transpose()?;
            let mut replay = Command::new(&observer);
            replay.arg("replay").arg(&recording).stdout(Stdio::null());
            if kind.contains("file") {
                replay
                    .arg("--sink")
                    .arg(format!("file://{}", file.display()));
            }
            if let Some(r) = &reader {
                replay.arg("--sink").arg(&r.url);
            }
            cmd::echo(&replay);
            let start = Instant::now();
            let status = replay.status().context("cannot run observer replay")?;
            let secs = start.elapsed().as_secs_f64();
            if !status.success() {
                bail!("observer replay failed: {status}");
            }
            let got = match reader {
                Some(r) => r.finish(Duration::from_millis(200)),
                None => count_lines(&file)?,
            };
            if kind == "file+tcp" && count_lines(&file)? != got {
                bail!(
                    "the file and the tcp output differ: {} vs {got} lines",
                    count_lines(&file)?
                );
            }
            lines = got;
            times.push(secs);
        }
        times.sort_by(f64::total_cmp);
        let median = times[REPEATS / 2];
        #[expect(
            clippy::cast_precision_loss,
            reason = "line counts stay far below 2^52"
        )]
        let rate = lines as f64 / median;
        let base = *baseline.get_or_insert(rate);
        println!(
            "| {kind} | {lines} | {median:.3} | {rate:.0} | {:.2} |",
            rate / base
        );
    }
    let _ = fs::remove_file(&file);
    let _ = fs::remove_file(&recording);
    Ok(())
}

fn count_lines(path: &Path) -> Result<u64> {
    let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(super::reader::newlines(&text))
}
