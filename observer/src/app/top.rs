//! `observer top`: the capture loop of `run`, feeding a read model that is drawn on a tick.
//!
//! The ring is drained on every wake-up and every 50 ms whatever the screen does (it is drawn
//! by a thread of its own, `top::display`); the model is rebuilt once per refresh (the kernel table, a counter read and a `sock_diag` listing, as
//! `observer snapshot` does), and a frame draws only the rows that fit, so a frame costs the
//! same with 10,000 connections as with 10 (BENCHMARKS.md). The detectors run as for
//! `run --anomalies`; their alerts fill the Anomalies view. [`replay`] feeds a recording
//! through the same pipeline and read model.

use std::{
    cell::RefCell,
    io::IsTerminal as _,
    path::Path,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    DRAIN_EVERY, Pipeline, Signals, TABLE_EVERY, TLS_RESCAN_EVERY, drain, filter, runtime,
    source::{Recording, Source as _},
    start_capture, tls_attached,
};
use crate::{
    cli::{DEFAULT_MAX_CONNECTIONS, TopArgs},
    decode::{Counters, Event},
    detect::{self, Alert, Detector},
    facts::{Fact, Purpose, SocketScan, listeners::ListenerSample},
    gather::Resolver,
    kernel,
    probe::{Capture, ProbeConfig},
    recording::Replay,
    sink::{Sink, SinkError, ndjson::Encoder},
    top::{
        Screen,
        display::{Display, Timing},
        feed::{Closed, Feed, News, Totals},
        model::Model,
    },
    track::{
        Filter, Tracker,
        record::{Output, RecordKind},
    },
};

/// Runs `observer top` until `q`, Ctrl-C or a signal.
///
/// # Errors
/// When capture cannot start or the terminal cannot be used.
pub fn run(args: &TopArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "observer top draws on a terminal, and its stdout is not one: run it in a terminal; \
             for a file or a pipe use `observer run` (NDJSON) or `observer snapshot` (a listing)"
        );
    }
    let (runtime, signals) = runtime()?;
    let filter = filter(&args.filters, false)?;
    let config = ProbeConfig {
        max_connections: args.max_connections,
        ring_bytes: args.ring_mib << 20,
        transitions: false,
        accept_hook: false,
        tls: args.tls,
        // SYNs and handshakes per listener (syn_flood and the Listeners view): a program run
        // per ingress segment while top runs (docs/anomalies.md, syn_flood).
        listeners: true,
    };
    let mut capture = start_capture(&runtime, config)?;
    let tracker = Tracker::new(kernel::boot_id(), filter, args.max_connections as usize);
    let (mut pipeline, tally) = top_pipeline(tracker, &thresholds(args));
    pipeline.resolver = Some(Resolver::new());
    pipeline.filter = filter;
    pipeline.listeners = Some(crate::gather::listeners::Listeners::default());
    super::tls_libraries(&capture.probe, &mut pipeline);
    runtime.block_on(live(signals, &mut capture, &mut pipeline, &tally, args))
}

/// The detectors' configuration: `run --anomalies`'s, always on.
#[must_use]
pub fn thresholds(args: &TopArgs) -> detect::Config {
    let mut on = args.anomalies.clone();
    on.anomalies = true;
    on.config()
        .unwrap_or_else(|| unreachable!("--anomalies is set"))
}

/// A pipeline whose records are built as for `run` (that is where closes, resets,
/// retransmits and alerts come from) and kept, as totals and alerts, for the read model.
fn top_pipeline(tracker: Tracker, detect: &detect::Config) -> (Pipeline, Rc<RefCell<Tally>>) {
    let encoder = Encoder::new(kernel::hostname(), kernel::boot_to_unix_offset_ns());
    let boot_id = tracker.boot_id();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let sink: Box<dyn Sink> = Box::new(TallySink(tally.clone()));
    let mut pipeline = Pipeline::new(tracker, encoder, vec![sink], None);
    pipeline.detector = Some(Detector::new(detect).on_boot(boot_id));
    (pipeline, tally)
}

/// What the records written since start add up to, and what the read model has not taken yet.
#[derive(Debug, Default)]
struct Tally {
    totals: Totals,
    /// The sockets whose closed record was written since the model last looked.
    closed: Vec<Closed>,
    /// The alerts written since the model last looked.
    alerts: Vec<Alert>,
}

/// `top`'s sink: it takes records, not lines.
struct TallySink(Rc<RefCell<Tally>>);

impl Sink for TallySink {
    fn wants_lines(&self) -> bool {
        false
    }

    fn record(&mut self, record: &Output, _line: &[u8]) -> Result<(), SinkError> {
        if let Output::Connection(c) = record
            && c.kind == RecordKind::Closed
        {
            let mut tally = self.0.borrow_mut();
            tally.totals.closed += 1;
            tally.totals.resets += u64::from(c.resets_sent + c.resets_received);
            tally.totals.retransmits += u64::from(c.retransmits.total());
            tally.closed.push(Closed {
                cookie: c.cookie,
                pid: c.process.map(|p| p.pid),
                comm: c.process.map(|p| p.name().to_owned()).unwrap_or_default(),
                bytes: c.source.bytes + c.destination.bytes,
            });
        }
        Ok(())
    }

    fn alert(&mut self, alert: &Alert, _line: &[u8]) {
        self.0.borrow_mut().alerts.push(alert.clone());
    }
}

impl Pipeline {
    /// Hands the read model what this listing and the records since the last one bring.
    fn refresh_model(
        &mut self,
        tally: &RefCell<Tally>,
        scan: &SocketScan,
        feed: &mut Feed,
        model: &mut Model,
        lost: u64,
    ) {
        let _ = self.flush(scan.ts_ns);
        let mut tally = tally.borrow_mut();
        let news = News {
            totals: tally.totals,
            closed: std::mem::take(&mut tally.closed),
            alerts: std::mem::take(&mut tally.alerts),
            lost,
        };
        feed.refresh(model, &self.tracker, scan, news);
    }
}

/// The read model as `observer top` would have shown it at the last socket listing of a
/// recording (`run --record`), with the detectors configured by `detect`.
///
/// # Errors
/// When the recording cannot be read.
pub fn replay(path: &Path, detect: &detect::Config) -> Result<Model> {
    let (header, input) = Replay::open(path)?;
    let filter = Filter {
        netns: header.netns,
        port: header.port,
        transitions: false,
    };
    let tracker = Tracker::new(
        header.boot_id_bytes(),
        filter,
        DEFAULT_MAX_CONNECTIONS as usize,
    );
    let (mut pipeline, tally) = top_pipeline(tracker, detect);
    pipeline.encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    // As `run` sets it: the detectors see the listener samples of the live run's filter.
    pipeline.filter = filter;
    let mut model = Model {
        host: header.host.clone(),
        boot_to_unix_ns: header.boot_to_unix_ns,
        ..Model::default()
    };
    let (mut feed, mut lost_now) = (None, 0);
    let mut source = Recording::new(input);
    while source.feed(&mut pipeline)? {
        let Some(event) = &source.last else { break };
        match event {
            Event::Counters(c) => lost_now = c.lost(),
            Event::Fact(f) => match &**f {
                Fact::Sockets(scan) => {
                    let feed = feed.get_or_insert_with(|| Feed::new(scan.ts_ns));
                    if scan.purpose != Purpose::Seed {
                        pipeline.refresh_model(&tally, scan, feed, &mut model, lost_now);
                    }
                }
                // A sample a second, as `top` takes one a refresh (1 s unless told otherwise).
                Fact::Listeners(sample) => {
                    let feed = feed.get_or_insert_with(|| Feed::new(sample.ts_ns));
                    show_listeners(feed, &mut model, sample, filter.port);
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(model)
}

/// A listener sample into the Listeners view, live and replayed: the listeners of `--port`
/// only (the sample already holds only the `--netns` namespace's).
fn show_listeners(feed: &mut Feed, model: &mut Model, sample: &ListenerSample, port: Option<u16>) {
    feed.listeners(model, sample.filtered(|_, p| port.is_none_or(|q| q == p)));
}

/// A test hook, set only by `tests/tests/top.rs`: `panic` or `error` makes `observer top` fail
/// that way after its first refresh, to check that the terminal is given back and the message
/// is shown.
const TEST_FAIL: &str = "OBSERVER_TOP_TEST_FAIL";

async fn live(
    signals: Signals,
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    tally: &RefCell<Tally>,
    args: &TopArgs,
) -> Result<()> {
    let Signals {
        mut sigint,
        mut sigterm,
        ..
    } = signals;
    let mut feed = Feed::new(kernel::boottime_ns());
    pipeline.scan(Purpose::Seed, capture);
    let mut model = Model {
        host: kernel::hostname(),
        boot_to_unix_ns: kernel::boot_to_unix_offset_ns(),
        ..Model::default()
    };
    let mut refreshes = Timing::default();
    let start = Instant::now();
    refresh(capture, pipeline, tally, Some((&mut model, &mut feed)));
    refreshes.add(start.elapsed());

    let screen = Screen::enter().context("cannot take the terminal (is stdout a tty?)")?;
    let display = Display::start(screen, model.clone()).context("cannot start the screen")?;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut tls_tick = tokio::time::interval(TLS_RESCAN_EVERY);
    let mut exec_ready: Vec<u32> = Vec::new();
    let period = Duration::from_millis(args.refresh_ms);
    let mut refresh_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_table = Instant::now();
    let test_fail = std::env::var(TEST_FAIL).ok();
    loop {
        tokio::select! {
            woke = capture.wake() => {
                woke.context("polling the ring buffer")?;
                capture.feed(pipeline)?;
            }
            _ = drain_tick.tick() => {
                drain(capture, pipeline);
                // As in `run`: TLS libraries of processes that exec'd one drain ago.
                let new = capture.probe.tls_scan_pids(&exec_ready);
                exec_ready = std::mem::take(&mut pipeline.execs);
                tls_attached(&capture.probe, pipeline, &new);
                if pipeline.tracker.wants_table() && last_table.elapsed() >= TABLE_EVERY {
                    pipeline.table(capture);
                    last_table = Instant::now();
                }
                let _ = pipeline.flush(kernel::boottime_ns());
            }
            _ = refresh_tick.tick() => {
                // Paused, the screen keeps its model, but the detectors' clock still ticks.
                let start = Instant::now();
                let show = (!display.paused()).then_some((&mut model, &mut feed));
                if refresh(capture, pipeline, tally, show) {
                    // The rows are rebuilt at each refresh: the screen takes them.
                    let conns = std::mem::take(&mut model.conns);
                    display.show(Model { conns, ..model.clone() });
                }
                refreshes.add(start.elapsed());
                last_table = Instant::now();
                match test_fail.as_deref() {
                    Some("panic") => panic!("{TEST_FAIL}=panic: a deliberate panic after a refresh"),
                    Some("error") => anyhow::bail!("{TEST_FAIL}=error: a deliberate error after a refresh"),
                    _ => {}
                }
            }
            _ = tls_tick.tick(), if args.tls => {
                let new = capture.probe.tls_scan_all();
                tls_attached(&capture.probe, pipeline, &new);
            }
            () = display.quit() => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let frames = display.stop();
    drain(capture, pipeline);
    let values = capture.probe.counters();
    // After the terminal was given back: what an SRE checks before trusting the screen.
    eprintln!(
        "observer top: stopped: {} connections closed, {} events, {} lost in the kernel; \
         refreshes {}; frames {}",
        tally.borrow().totals.closed,
        values[observer_common::counter::EVENTS as usize],
        Counters { ts_ns: 0, values }.lost(),
        refreshes.summary(),
        frames
            .as_ref()
            .map_or_else(ToString::to_string, Timing::summary),
    );
    frames.context("the terminal")?;
    Ok(())
}

/// Reads fresh tables and counters (the detectors' clock ticks with them) and, unless the
/// display is paused, rebuilds the model: whether it did.
fn refresh(
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    tally: &RefCell<Tally>,
    show: Option<(&mut Model, &mut Feed)>,
) -> bool {
    pipeline.table(capture);
    let listeners = pipeline.listeners(capture);
    if pipeline
        .detector
        .as_ref()
        .is_some_and(Detector::wants_time_wait)
    {
        let _ = pipeline.time_wait_census(pipeline.filter.netns, capture);
    }
    let counters = Counters {
        ts_ns: kernel::boottime_ns(),
        values: capture.probe.counters(),
    };
    pipeline.event(&Event::Counters(counters));
    let Some((model, feed)) = show else {
        let _ = pipeline.flush(counters.ts_ns);
        return false;
    };
    if let Some(sample) = listeners {
        show_listeners(feed, model, &sample, pipeline.filter.port);
    }
    let Some(scan) = pipeline.scan(Purpose::Snapshot, capture) else {
        return false;
    };
    pipeline.refresh_model(tally, &scan, feed, model, counters.lost());
    true
}
