//! `observer top`: the capture loop of `run`, feeding a read model that is drawn on a tick.
//!
//! The ring is drained on every wake-up and every 50 ms whatever the screen does; the model
//! is rebuilt once per refresh (the kernel table and a `sock_diag` listing, as `observer
//! snapshot` does), and a frame draws only the rows that fit, so a frame costs the same with
//! 10,000 connections as with 10 (BENCHMARKS.md).

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::io::{Interest, unix::AsyncFd};

use super::{DRAIN_EVERY, Pipeline, Ring, Signals, TABLE_EVERY, drain, filter, runtime};
use crate::{
    cli::TopArgs,
    facts::{Purpose, listeners::ListenerSample},
    gather::Resolver,
    kernel,
    probe::{Probe, ProbeConfig},
    sink::{Sink, ndjson::Encoder},
    top::{
        Screen,
        input::{Action, Ui},
        model::{Conn, Model, Rates},
    },
    track::Tracker,
};

pub fn run(args: &TopArgs) -> Result<()> {
    let (runtime, signals) = runtime()?;
    let filter = filter(&args.filters, false)?;
    let config = ProbeConfig {
        max_connections: args.max_connections,
        ring_bytes: args.ring_mib << 20,
        transitions: false,
        accept_hook: false,
        tls: false,
        // SYNs and handshakes per listener for the Listeners view: a program run per ingress
        // segment while top runs (docs/anomalies.md, syn_flood).
        listeners: true,
    };
    let (mut probe, ring) = Probe::load(config)
        .context("cannot start capture (`observer check` shows what is missing)")?;
    // The records are built as for `run` (that is where closes, resets and retransmits are
    // counted) and thrown away.
    let sink = Sink::append(Path::new("/dev/null"))?;
    let encoder = Encoder::new(kernel::hostname(), kernel::boot_to_unix_offset_ns());
    let tracker = Tracker::new(kernel::boot_id(), filter, args.max_connections as usize);
    let mut pipeline = Pipeline::new(tracker, encoder, sink, None);
    pipeline.resolver = Some(Resolver::new());
    pipeline.tally.closed_cookies = Some(Vec::new());
    pipeline.filter = filter;
    pipeline.listeners = Some(crate::gather::listeners::Listeners::default());
    runtime.block_on(live(signals, &mut probe, ring, &mut pipeline, args))
}

/// The counters a refresh compares with the previous one.
struct Last {
    ts_ns: u64,
    closed: u64,
    resets: u64,
    retransmits: u64,
    cookies: HashSet<u64>,
    listeners: Option<ListenerSample>,
}

async fn live(
    signals: Signals,
    probe: &mut Probe,
    ring: Ring,
    pipeline: &mut Pipeline,
    args: &TopArgs,
) -> Result<()> {
    // SAFETY: as in `super::live`: the RingBuf owns its fd until dropped with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let Signals {
        mut sigint,
        mut sigterm,
        ..
    } = signals;
    let started_ns = kernel::boottime_ns();
    pipeline.scan(Purpose::Seed, ring.get_mut());
    let mut model = Model {
        host: kernel::hostname(),
        ..Model::default()
    };
    let mut last: Option<Last> = None;
    refresh(
        probe,
        pipeline,
        ring.get_mut(),
        &mut model,
        &mut last,
        started_ns,
    );

    let mut screen = Screen::enter().context("cannot take the terminal (is stdout a tty?)")?;
    let mut ui = Ui::default();
    screen.draw(&model, &mut ui)?;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let period = Duration::from_millis(args.refresh_ms);
    let mut refresh_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_table = Instant::now();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), pipeline);
                guard.clear_ready();
                let _ = pipeline.flush(kernel::boottime_ns());
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), pipeline);
                if pipeline.tracker.wants_table() && last_table.elapsed() >= TABLE_EVERY {
                    pipeline.table(probe, ring.get_mut());
                    last_table = Instant::now();
                }
                let _ = pipeline.flush(kernel::boottime_ns());
                match screen.input(&mut ui)? {
                    Action::Quit => break,
                    Action::Redraw => screen.draw(&model, &mut ui)?,
                    Action::None => {}
                }
            }
            _ = refresh_tick.tick() => {
                if !ui.paused {
                    refresh(probe, pipeline, ring.get_mut(), &mut model, &mut last, started_ns);
                    last_table = Instant::now();
                }
                screen.draw(&model, &mut ui)?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    drop(screen);
    Ok(())
}

/// Rebuilds the model from fresh tables; rates are over the time since the last refresh.
fn refresh(
    probe: &Probe,
    pipeline: &mut Pipeline,
    ring: &mut Ring,
    model: &mut Model,
    last: &mut Option<Last>,
    started_ns: u64,
) {
    pipeline.table(probe, ring);
    let Some(scan) = pipeline.scan(Purpose::Snapshot, ring) else {
        return;
    };
    let now = scan.ts_ns;
    let _ = pipeline.flush(now);
    model.conns = pipeline
        .tracker
        .snapshot(&scan, now)
        .iter()
        .map(Conn::from_row)
        .collect();
    model.uptime_ns = now.saturating_sub(started_ns);
    let counters = probe.counters();
    model.lost = counters[observer_common::counter::RING_FULL as usize]
        + counters[observer_common::counter::MAP_FULL as usize];
    let listeners = listener_sample(probe, pipeline, now);
    if let Some(sample) = &listeners {
        let prev = last.as_ref().and_then(|l| l.listeners.as_ref());
        model.listeners = crate::top::listeners::rows(prev, sample);
    }
    let tally = &mut pipeline.tally;
    let closed_cookies = tally
        .closed_cookies
        .as_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let cookies: HashSet<u64> = model.conns.iter().map(|c| c.cookie).collect();
    if let Some(prev) = last.as_ref() {
        #[expect(clippy::cast_precision_loss, reason = "rates for display")]
        let per_s = |n: u64| n as f64 * 1e9 / now.saturating_sub(prev.ts_ns).max(1) as f64;
        // New: open now and not before, or closed before anyone saw them open.
        let born = cookies.difference(&prev.cookies).count()
            + closed_cookies
                .iter()
                .filter(|c| !prev.cookies.contains(c))
                .count();
        model.rates = Rates {
            new: per_s(born as u64),
            closed: per_s(tally.closed - prev.closed),
            retransmits: per_s(tally.retransmits - prev.retransmits),
            resets: per_s(tally.resets - prev.resets),
        };
    }
    *last = Some(Last {
        ts_ns: now,
        closed: tally.closed,
        resets: tally.resets,
        retransmits: tally.retransmits,
        cookies,
        listeners,
    });
}

/// The listeners now (in the `--netns` namespace when given), for the Listeners view.
fn listener_sample(probe: &Probe, pipeline: &mut Pipeline, now: u64) -> Option<ListenerSample> {
    let counts = probe.listen_counts();
    let (sample, _warnings) =
        pipeline
            .listeners
            .as_mut()?
            .sample(now, pipeline.filter.netns, counts.as_ref());
    Some(sample.filtered(|_, port| pipeline.filter.port.is_none_or(|p| p == port)))
}
