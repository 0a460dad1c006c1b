//! Wires the pipeline (probe → decode → track → sink, in `pipeline`) for a live run and replay.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _};
use observer_common::counter;
use tokio::signal::unix::{SignalKind, signal};

mod chores;
mod pipeline;
mod snapshot;
mod source;
pub mod top;

use pipeline::Pipeline;
use source::{Recording, Source as _, drain};

use crate::{
    check,
    cli::{Cli, Command, DEFAULT_MAX_CONNECTIONS, DEFAULT_QUEUE_MIB, Filters, ReplayArgs, RunArgs},
    config, control,
    decode::{Counters, Event},
    detect::Detector,
    facts::{Fact, Purpose},
    gather::{self, Resolver},
    kernel,
    probe::{Capture, Probe, ProbeConfig},
    recording::{Header, Recorder, Replay},
    sink::{
        self, FLUSH_TIMEOUT, Output, Sink, SinkError, SinkSpec,
        ndjson::{AgentRecord, Encoder},
    },
    track::{Filter, Tracker},
};

/// How often the ring is drained when the kernel did not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often every process is searched for TLS libraries loaded with `dlopen()`.
const TLS_RESCAN_EVERY: Duration = Duration::from_secs(5);
/// How often the kernel's loss counters are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// The least time between two reads of the kernel's socket table for records waiting for
/// their other end.
const TABLE_EVERY: Duration = Duration::from_millis(500);

/// Entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = match parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("observer: error: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Check(args)) => {
            if let Some(path) = &args.config {
                match config::load(path, &run_command()) {
                    Ok(settings) => eprintln!(
                        "observer: the configuration {} is valid ({} arguments for run)",
                        path.display(),
                        settings.len()
                    ),
                    Err(err) => {
                        eprintln!("observer: error: {err}");
                        return ExitCode::from(2);
                    }
                }
            }
            return check::run();
        }
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Snapshot(args)) => snapshot::run(&args),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Top(args)) => top::run(&args),
        None => run(&cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("observer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with a later flag overriding an earlier one (the file's come first).
fn command() -> clap::Command {
    Cli::command()
        .args_override_self(true)
        .mut_subcommand("run", |run| run.args_override_self(true))
}

fn run_command() -> clap::Command {
    command()
        .find_subcommand("run")
        .cloned()
        .unwrap_or_else(|| unreachable!("run is a subcommand"))
}

/// Parses `argv`; for `run`, the configuration file's arguments go before the command line's.
/// Exits as clap does on a usage error or `--help`.
fn parse_args(mut argv: Vec<std::ffi::OsString>) -> Result<Cli, config::ConfigError> {
    let cmd = command();
    if let Ok(matches) = cmd.clone().try_get_matches_from(&argv) {
        // Run's flags come right after the binary, or after `run` (they conflict with any
        // other subcommand, so nothing precedes it).
        let run = match matches.subcommand() {
            None => Some((&matches, 1)),
            Some(("run", sub)) => Some((sub, 2)),
            Some(_) => None,
        };
        if let Some((run, at)) = run {
            let path = match run.get_one::<std::path::PathBuf>("config") {
                Some(p) if p.as_os_str() == "none" => None,
                Some(p) => Some(p.clone()),
                None => Some(std::path::PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
            };
            if let Some(path) = path {
                let mut settings = config::load(&path, &run_command())?;
                // A repeatable flag given on the command line replaces the file's list (as
                // any flag overrides the file) rather than adding to it.
                for arg in run_command().get_arguments() {
                    if matches!(arg.get_action(), clap::ArgAction::Append)
                        && run.value_source(arg.get_id().as_str())
                            == Some(clap::parser::ValueSource::CommandLine)
                        && let Some(long) = arg.get_long()
                    {
                        settings = config::without(settings, &format!("--{long}"));
                    }
                }
                eprintln!("observer: configuration from {}", path.display());
                argv.splice(at..at, settings);
            }
        }
    }
    let matches = cmd.get_matches_from(argv);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

fn filter(filters: &Filters, allow_inode: bool) -> Result<Filter> {
    let netns = match &filters.netns {
        None => None,
        Some(arg) => match arg.parse::<u32>() {
            Ok(inode) if allow_inode => Some(inode),
            _ => Some(kernel::netns_inode(Path::new(arg))?),
        },
    };
    Ok(Filter {
        port: filters.port,
        netns,
        transitions: filters.transitions,
    })
}

/// The outputs to write to: `--output`, then each `--sink`; stdout without either.
fn sink_specs(output: Option<&Path>, sinks: &[SinkSpec]) -> Vec<SinkSpec> {
    let mut specs: Vec<SinkSpec> = output
        .map(|p| SinkSpec::file(p.to_owned()))
        .into_iter()
        .collect();
    specs.extend(sinks.iter().cloned());
    if specs.is_empty() {
        specs.push(SinkSpec::stdout());
    }
    specs
}

/// Opens every output, each taking what `--filter` (`every`) and its own `filter` admit;
/// `lossless` ones wait for room rather than drop (a replay: no capture to protect).
fn open_sinks(
    specs: &[SinkSpec],
    queue_mib: u32,
    every: Option<&crate::filter::Filter>,
    lossless: bool,
) -> Result<Vec<Box<dyn Sink>>> {
    for (i, spec) in specs.iter().enumerate() {
        if let Some(twin) = specs[..i]
            .iter()
            .find(|s| s.target.same_place(&spec.target))
        {
            anyhow::bail!(
                "the output {} is given twice (as {} and {}): its lines would be written twice; \
                 give each output once (a --sink on the command line replaces the file's)",
                spec.target.scheme(),
                twin.url,
                spec.url
            );
        }
    }
    let names = sink::names(specs);
    let mut sinks = Vec::with_capacity(specs.len());
    for (spec, name) in specs.iter().zip(names) {
        // Terms are ANDed by spaces, so the two expressions are one.
        let text = [every.map(ToString::to_string), spec.filter.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let filter = crate::filter::Filter::parse(&text)
            .with_context(|| format!("the filter of {}", spec.url))?;
        let output = Output::open(spec, name, (queue_mib as usize) << 20)?.filtered(filter);
        sinks.push(Box::new(if lossless { output.lossless() } else { output }) as Box<dyn Sink>);
    }
    Ok(sinks)
}

/// A single-threaded runtime, with the signals registered before anything slow starts.
fn runtime() -> Result<(tokio::runtime::Runtime, Signals)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let signals = {
        let _context = runtime.enter();
        Signals::new()?
    };
    Ok((runtime, signals))
}

fn run(args: &RunArgs) -> Result<()> {
    let (runtime, signals) = runtime()?;
    let filter = filter(&args.filters, false)?;
    let sinks = open_sinks(
        &sink_specs(args.output.as_deref(), &args.sink),
        args.queue_mib,
        args.filter.as_ref(),
        false,
    )?;
    let detector_config = args.anomalies.config();
    let config = ProbeConfig {
        max_connections: args.max_connections,
        ring_bytes: args.ring_mib << 20,
        transitions: args.filters.transitions,
        accept_hook: args.accept_hook,
        tls: args.tls,
        listeners: detector_config
            .as_ref()
            .is_some_and(|c| c.syn_flood.is_some()),
    };
    let mut capture = start_capture(&runtime, config)?;
    let boot_id = kernel::boot_id();
    let header = Header {
        abi_version: observer_common::ABI_VERSION,
        observer_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: kernel::hostname(),
        kernel: kernel::release(),
        boot_id: Header::hex(&boot_id),
        boot_to_unix_ns: kernel::boot_to_unix_offset_ns(),
        netns: filter.netns,
        port: filter.port,
    };
    let recorder = args
        .record
        .as_deref()
        .map(|p| Recorder::create(p, &header))
        .transpose()?;
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let tracker = Tracker::new(boot_id, filter, args.max_connections as usize);
    let mut pipeline = Pipeline::new(tracker, encoder, sinks, recorder);
    pipeline.resolver = Some(Resolver::new());
    pipeline.detector = detector_config.map(|c| Detector::new(&c).on_boot(boot_id));
    pipeline.filter = filter;
    if pipeline
        .detector
        .as_ref()
        .is_some_and(Detector::wants_listeners)
    {
        pipeline.listeners = Some(gather::listeners::Listeners::default());
    }
    tls_libraries(&capture.probe, &mut pipeline);
    eprintln!(
        "observer: capturing on {} ({})",
        header.kernel,
        capture.probe.attached.join(", ")
    );

    runtime.block_on(live(signals, &mut capture, &mut pipeline, args, &header))
}

/// Loads and attaches the probe, its ring polled by `runtime`.
fn start_capture(runtime: &tokio::runtime::Runtime, config: ProbeConfig) -> Result<Capture> {
    let _context = runtime.enter();
    Capture::start(config).context("cannot start capture (`observer check` shows what is missing)")
}

/// The signals a live run answers. Registered before loading the probe, so that a signal sent
/// while it loads is handled rather than fatal.
struct Signals {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    sigusr1: tokio::signal::unix::Signal,
    sigusr2: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            sigusr1: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
            sigusr2: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
            sighup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }
}

async fn live(
    signals: Signals,
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    args: &RunArgs,
    header: &Header,
) -> Result<()> {
    let Signals {
        mut sigint,
        mut sigterm,
        mut sigusr1,
        mut sigusr2,
        mut sighup,
    } = signals;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut tls_tick = tokio::time::interval(TLS_RESCAN_EVERY);
    let mut chores = chores::Chores::new(header.netns);
    let mut counter_tick = tokio::time::interval(COUNTERS_EVERY);
    let updates = Duration::from_secs(args.update_interval.max(1));
    let mut update_tick = tokio::time::interval_at(tokio::time::Instant::now() + updates, updates);
    let control = control_listener(&args.control_socket);
    let (requests_tx, mut requests) = tokio::sync::mpsc::channel(4);
    let deadline = tokio::time::sleep(args.duration.map_or(Duration::MAX / 4, Duration::from_secs));
    tokio::pin!(deadline);

    let mut agent = AgentRecord {
        action: "started",
        reason: None,
        ts_ns: kernel::boottime_ns(),
        version: env!("CARGO_PKG_VERSION"),
        kernel: header.kernel.clone(),
        hooks: capture.probe.attached.clone(),
        records: None,
        transitions: args.filters.transitions,
        accept_hook: args.accept_hook,
        max_connections: args.max_connections,
        ring_mib: args.ring_mib,
        queue_mib: args.queue_mib,
        sinks: Vec::new(),
    };
    // The sockets that existed before: listed once the hooks are attached, so that a change
    // during the listing is seen by both, and deduplicated by socket cookie. Before the
    // `started` line: from then on, every socket is known.
    pipeline.scan(Purpose::Seed, capture);
    if pipeline.agent(&agent).is_err() {
        return Ok(());
    }
    let outcome = loop {
        let result = tokio::select! {
            woke = capture.wake() => {
                woke.context("polling the ring buffer")?;
                fed(capture.feed(pipeline)?)
            }
            _ = drain_tick.tick() => chores.drained(capture, pipeline),
            _ = update_tick.tick(), if args.update_interval > 0 => {
                pipeline.table(capture);
                chores.last_table = Instant::now();
                pipeline.scan(Purpose::Update, capture);
                pipeline.flush(kernel::boottime_ns())
            }
            _ = tls_tick.tick() => {
                let new = capture.probe.tls_scan_all();
                tls_attached(&capture.probe, pipeline, &new);
                Ok(())
            }
            _ = counter_tick.tick() => {
                let _ = pipeline.listeners(capture);
                // The detectors' clock: what the ring holds goes first (`Tracker::settled`).
                drain(capture, pipeline);
                let counters = Counters { ts_ns: kernel::boottime_ns(), values: capture.probe.counters() };
                pipeline.event(&Event::Counters(counters));
                pipeline.write()
            }
            Ok((stream, _)) = accept(control.as_ref()) => {
                control::serve(stream, requests_tx.clone());
                Ok(())
            }
            Some(request) = requests.recv() => {
                let body = if request.line == "snapshot" {
                    pipeline.snapshot(capture)
                } else {
                    format!("{{\"error\":\"unknown request {:?}\"}}\n", request.line).into_bytes()
                };
                let _ = request.reply.send(body);
                pipeline.flush(kernel::boottime_ns())
            }
            _ = sigusr1.recv() => toggle(capture, pipeline, &mut agent, false),
            _ = sigusr2.recv() => toggle(capture, pipeline, &mut agent, true),
            _ = sighup.recv() => pipeline.reopen(&mut agent),
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            () = &mut deadline => break "--duration elapsed",
        };
        if let Err(SinkError::Closed) = result {
            break "output closed";
        }
    };
    stop(capture, pipeline, agent, outcome);
    Ok(())
}

/// What a feed of the pipeline means for the loop: a source that ended is a reader gone.
fn fed(open: bool) -> Result<(), SinkError> {
    if open { Ok(()) } else { Err(SinkError::Closed) }
}

/// The control socket for `observer snapshot`, unless turned off (`none`) or impossible.
fn control_listener(path: &Path) -> Option<control::Listener> {
    if path.as_os_str() == "none" {
        return None;
    }
    control::listen(path)
        .inspect_err(|err| {
            eprintln!("observer: warning: no `observer snapshot` from this agent: {err}");
        })
        .ok()
}

/// The end of `run`: the last events, the final table and listing, the `stopped` line.
fn stop(
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    mut agent: AgentRecord,
    outcome: &'static str,
) {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    for output in pipeline.sinks.iter_mut().filter_map(|s| s.output()) {
        output.closing(deadline);
    }
    drain(capture, pipeline);
    if outcome != "output closed" {
        pipeline.table(capture);
        pipeline.scan(Purpose::Final, capture);
    }
    let counters = Counters {
        ts_ns: kernel::boottime_ns(),
        values: capture.probe.counters(),
    };
    pipeline.event(&Event::Counters(counters));
    let closed = matches!(pipeline.finish(counters.ts_ns), Err(SinkError::Closed));
    agent.action = "stopped";
    agent.reason = Some(outcome);
    agent.ts_ns = kernel::boottime_ns();
    agent.records = Some(pipeline.tracker.records);
    agent.sinks = pipeline
        .sinks
        .iter_mut()
        .filter_map(|s| s.output())
        .map(|o| (o.name(), o.totals()))
        .collect();
    if !closed {
        let _ = pipeline.agent(&agent);
    }
    for output in pipeline.sinks.iter_mut().filter_map(|s| s.output()) {
        output.close();
    }
    let totals = pipeline
        .sinks
        .iter_mut()
        .filter_map(|s| s.output())
        .map(|o| o.finish(Some(deadline)))
        .fold(sink::Totals::default(), |a, t| sink::Totals {
            lines: a.lines + t.lines,
            dropped: a.dropped + t.dropped,
            written: a.written + t.written,
            unwritten: a.unwritten + t.unwritten,
        });
    let at = |i: u32| counters.values[i as usize];
    eprintln!(
        "observer: stopped ({outcome}): {} connection records, {} events, {} lost in the kernel{}{}{}",
        pipeline.tracker.records,
        at(counter::EVENTS),
        counters.lost(),
        match at(counter::TAKEN_OVER) {
            0 => String::new(),
            n => format!(" ({n} transitions of interrupted hook runs taken over)"),
        },
        match totals.dropped {
            0 => String::new(),
            n =>
                format!(", {n} lines dropped by outputs (a full queue, or refused by a collector)"),
        },
        match totals.unwritten {
            0 => String::new(),
            n => format!(
                ", {n} lines not written within {} s",
                FLUSH_TIMEOUT.as_secs()
            ),
        }
    );
}

/// The next client of the control socket; never, without one.
async fn accept(
    listener: Option<&control::Listener>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.socket.accept().await,
        None => std::future::pending().await,
    }
}

/// Reports TLS library files that just got uprobes, and tells the tracker their names.
fn tls_attached(probe: &Probe, pipeline: &mut Pipeline, new: &[String]) {
    if new.is_empty() {
        return;
    }
    eprintln!("observer: TLS uprobes attached to {}", new.join(", "));
    tls_libraries(probe, pipeline);
}

/// Tells the tracker the names of the library files with uprobes, through the recording.
fn tls_libraries(probe: &Probe, pipeline: &mut Pipeline) {
    let names = probe.tls_libraries();
    if !names.is_empty() {
        pipeline.event(&Event::Fact(Box::new(Fact::TlsLibraries(names))));
    }
}

/// SIGUSR1 pauses capture (every hook detached: the kernel runs none of observer's code) and
/// SIGUSR2 resumes it; each writes an `observer.agent` line once done.
fn toggle(
    capture: &mut Capture,
    pipeline: &mut Pipeline,
    agent: &mut AgentRecord,
    resume: bool,
) -> Result<(), SinkError> {
    let done = if resume {
        capture.probe.resume()
    } else {
        pause(capture, pipeline)
    };
    if let Err(err) = done {
        eprintln!(
            "observer: warning: {} failed: {err}",
            if resume { "resume" } else { "pause" }
        );
        return Ok(());
    }
    agent.action = if resume { "resumed" } else { "paused" };
    agent.ts_ns = kernel::boottime_ns();
    agent.hooks.clone_from(&capture.probe.attached);
    pipeline.agent(agent)
}

/// Detaches every hook, draining the ring after each (a detach takes tens of ms).
fn pause(capture: &mut Capture, pipeline: &mut Pipeline) -> Result<(), crate::probe::ProbeError> {
    loop {
        let more = capture.probe.pause_step()?;
        drain(capture, pipeline);
        if !more {
            return Ok(());
        }
    }
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let (header, input) = Replay::open(&args.file)?;
    let mut filter = filter(&args.filters, true)?;
    if filter.netns.is_none() && filter.port.is_none() {
        filter.netns = header.netns;
        filter.port = header.port;
    }
    let specs = sink_specs(args.output.as_deref(), &args.sink);
    let sink = open_sinks(&specs, DEFAULT_QUEUE_MIB, args.filter.as_ref(), true)?;
    let tracker = Tracker::new(
        header.boot_id_bytes(),
        filter,
        DEFAULT_MAX_CONNECTIONS as usize,
    );
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let mut pipeline = Pipeline::new(tracker, encoder, sink, None);
    pipeline.detector = args
        .anomalies
        .config()
        .map(|c| Detector::new(&c).on_boot(header.boot_id_bytes()));
    pipeline.filter = filter;
    let mut source = Recording::new(input);
    while source.feed(&mut pipeline)? {}
    if !source.ended {
        // The output's reader went away.
        return Ok(());
    }
    if source.truncated() {
        eprintln!(
            "observer: warning: {} ends inside a frame; replayed what was complete",
            args.file.display()
        );
    }
    let _ = pipeline.finish(source.last_ts);
    for output in pipeline.sinks.iter_mut().filter_map(|s| s.output()) {
        output.finish(None);
    }
    Ok(())
}
