//! Wires the pipeline (probe → decode → track → sink) for a live run and for replay.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    check,
    cli::{Cli, Command, Filters, ReplayArgs, RunArgs},
    decode::{self, Counters, Event},
    kernel,
    probe::{Probe, ProbeConfig},
    recording::{Header, Recorder, Replay},
    sink::{
        Sink, SinkError,
        ndjson::{AgentRecord, Encoder},
    },
    track::{Filter, Tracker, record::Output},
};

/// How often the ring is drained when the kernel did not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often every process is searched for TLS libraries loaded with `dlopen()`.
const TLS_RESCAN_EVERY: Duration = Duration::from_secs(5);
/// How often the kernel's loss counters are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// Entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => return check::run(),
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Run(args)) => run(&args),
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

fn open_sink(output: Option<&Path>) -> Result<Sink> {
    Ok(match output {
        Some(path) => Sink::append(path)?,
        None => Sink::stdout(),
    })
}

/// Decoded events in, NDJSON out; shared by the live run and replay.
struct Pipeline {
    tracker: Tracker,
    encoder: Encoder,
    sink: Sink,
    recorder: Option<Recorder>,
    outputs: Vec<Output>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    warned_decode: bool,
    /// Processes that exec'd since the last drain: their TLS libraries are looked for one
    /// drain later, once the dynamic loader has mapped them.
    execs: Vec<u32>,
}

impl Pipeline {
    fn new(tracker: Tracker, encoder: Encoder, sink: Sink, recorder: Option<Recorder>) -> Self {
        Self {
            tracker,
            encoder,
            sink,
            recorder,
            outputs: Vec::with_capacity(1024),
            buf: Vec::with_capacity(1 << 20),
            scratch: Vec::new(),
            warned_decode: false,
            execs: Vec::new(),
        }
    }

    /// One event as the kernel wrote it.
    fn raw(&mut self, bytes: &[u8]) {
        if let Some(rec) = &mut self.recorder {
            rec.frame(bytes);
        }
        match decode::decode(bytes) {
            Ok(event) => {
                if let Event::Exec(e) = &event {
                    self.execs.push((e.header.pid_tgid >> 32) as u32);
                }
                self.tracker.ingest(&event, &mut self.outputs);
            }
            Err(err) => {
                self.tracker.note_decode_error();
                if !self.warned_decode {
                    eprintln!(
                        "observer: warning: undecodable kernel event ({err}); counted as loss"
                    );
                    self.warned_decode = true;
                }
            }
        }
    }

    fn event(&mut self, event: &Event) {
        if let Some(rec) = &mut self.recorder {
            rec.event(event, &mut self.scratch);
        }
        self.tracker.ingest(event, &mut self.outputs);
    }

    /// Emits what is due at `now_ns` and writes it out.
    fn flush(&mut self, now_ns: u64) -> Result<(), SinkError> {
        self.tracker.flush_due(now_ns, &mut self.outputs);
        self.write()
    }

    fn write(&mut self) -> Result<(), SinkError> {
        for output in self.outputs.drain(..) {
            // Serialising these types cannot fail.
            let _ = self.encoder.write(&output, &mut self.buf);
        }
        let result = if self.buf.is_empty() {
            self.sink.retry()
        } else {
            self.sink.write(&self.buf)
        };
        self.buf.clear();
        result
    }

    fn agent(&mut self, record: &AgentRecord) -> Result<(), SinkError> {
        let _ = self.encoder.agent(record, &mut self.buf);
        self.write()
    }

    fn finish(&mut self, ts_ns: u64) -> Result<(), SinkError> {
        self.tracker.finish(ts_ns, &mut self.outputs);
        let result = self.write();
        if let Some(rec) = &mut self.recorder {
            rec.flush();
        }
        result
    }
}

fn run(args: &RunArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let signals = {
        let _context = runtime.enter();
        Signals::new()?
    };
    let filter = filter(&args.filters, false)?;
    let sink = open_sink(args.output.as_deref())?;
    let config = ProbeConfig {
        max_connections: args.max_connections,
        ring_bytes: args.ring_mib << 20,
        transitions: args.filters.transitions,
        accept_hook: args.accept_hook,
        tls: args.tls,
    };
    let (mut probe, ring) = Probe::load(config)
        .context("cannot start capture (`observer check` shows what is missing)")?;
    let boot_id = kernel::boot_id();
    let header = Header {
        abi_version: observer_common::ABI_VERSION,
        observer_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: kernel::hostname(),
        kernel: kernel::release(),
        boot_id: Header::hex(&boot_id),
        boot_to_unix_ns: kernel::boot_to_unix_offset_ns(),
    };
    let recorder = args
        .record
        .as_deref()
        .map(|p| Recorder::create(p, &header))
        .transpose()?;
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let mut pipeline = Pipeline::new(Tracker::new(boot_id, filter), encoder, sink, recorder);
    pipeline.tracker.tls.libraries = probe.tls_libraries();
    eprintln!(
        "observer: capturing on {} ({})",
        header.kernel,
        probe.attached.join(", ")
    );

    runtime.block_on(live(
        signals,
        &mut probe,
        ring,
        &mut pipeline,
        args,
        &header,
    ))
}

/// The signals a live run answers. Registered before loading the probe, so that a signal sent
/// while it loads is handled rather than fatal.
struct Signals {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    sigusr1: tokio::signal::unix::Signal,
    sigusr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            sigusr1: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
            sigusr2: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
        })
    }
}

async fn live(
    signals: Signals,
    probe: &mut Probe,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    pipeline: &mut Pipeline,
    args: &RunArgs,
    header: &Header,
) -> Result<()> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until it is dropped
    // together with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?;
    let Signals {
        mut sigint,
        mut sigterm,
        mut sigusr1,
        mut sigusr2,
    } = signals;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut tls_tick = tokio::time::interval(TLS_RESCAN_EVERY);
    let mut exec_ready: Vec<u32> = Vec::new();
    let mut counter_tick = tokio::time::interval(COUNTERS_EVERY);
    let deadline = tokio::time::sleep(args.duration.map_or(Duration::MAX / 4, Duration::from_secs));
    tokio::pin!(deadline);

    let mut agent = AgentRecord {
        action: "started",
        reason: None,
        ts_ns: kernel::boottime_ns(),
        version: env!("CARGO_PKG_VERSION"),
        kernel: header.kernel.clone(),
        hooks: probe.attached.clone(),
        records: None,
        transitions: args.filters.transitions,
        accept_hook: args.accept_hook,
        max_connections: args.max_connections,
        ring_mib: args.ring_mib,
    };
    if pipeline.agent(&agent).is_err() {
        return Ok(());
    }
    let outcome = loop {
        let result = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), pipeline);
                guard.clear_ready();
                pipeline.flush(kernel::boottime_ns())
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), pipeline);
                let new = probe.tls_scan_pids(&exec_ready);
                exec_ready = std::mem::take(&mut pipeline.execs);
                tls_attached(probe, pipeline, &new);
                pipeline.flush(kernel::boottime_ns())
            }
            _ = tls_tick.tick() => {
                let new = probe.tls_scan_all();
                tls_attached(probe, pipeline, &new);
                Ok(())
            }
            _ = counter_tick.tick() => {
                let counters = Counters { ts_ns: kernel::boottime_ns(), values: probe.counters() };
                pipeline.event(&Event::Counters(counters));
                pipeline.write()
            }
            _ = sigusr1.recv() => toggle(probe, pipeline, &mut agent, false),
            _ = sigusr2.recv() => toggle(probe, pipeline, &mut agent, true),
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            () = &mut deadline => break "--duration elapsed",
        };
        if let Err(SinkError::Closed) = result {
            break "output closed";
        }
    };

    drain(ring.get_mut(), pipeline);
    let counters = Counters {
        ts_ns: kernel::boottime_ns(),
        values: probe.counters(),
    };
    pipeline.event(&Event::Counters(counters));
    let closed = matches!(pipeline.finish(counters.ts_ns), Err(SinkError::Closed));
    agent.action = "stopped";
    agent.reason = Some(outcome);
    agent.ts_ns = kernel::boottime_ns();
    agent.records = Some(pipeline.tracker.records);
    if !closed && pipeline.agent(&agent).is_ok() {
        // Give a full disk a last chance before exiting.
        let _ = pipeline.sink.retry();
    }
    let pending = pipeline.sink.backlog();
    eprintln!(
        "observer: stopped ({outcome}): {} connection records, {} events, {} lost in the kernel{}",
        pipeline.tracker.records,
        counters.values[observer_common::counter::EVENTS as usize],
        counters.values[observer_common::counter::RING_FULL as usize]
            + counters.values[observer_common::counter::MAP_FULL as usize],
        if pending > 0 {
            format!(", {pending} bytes could not be written")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Reports TLS library files that just got uprobes, and tells the tracker their names.
fn tls_attached(probe: &Probe, pipeline: &mut Pipeline, new: &[String]) {
    if new.is_empty() {
        return;
    }
    eprintln!("observer: TLS uprobes attached to {}", new.join(", "));
    pipeline.tracker.tls.libraries = probe.tls_libraries();
}

/// SIGUSR1 pauses capture (every hook detached: the kernel runs none of observer's code) and
/// SIGUSR2 resumes it; each writes an `observer.agent` line once done.
fn toggle(
    probe: &mut Probe,
    pipeline: &mut Pipeline,
    agent: &mut AgentRecord,
    resume: bool,
) -> Result<(), SinkError> {
    let done = if resume {
        probe.resume()
    } else {
        probe.pause()
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
    agent.hooks.clone_from(&probe.attached);
    pipeline.agent(agent)
}

/// Feeds every event waiting in the ring to the pipeline. No syscalls: the ring is mmapped.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, pipeline: &mut Pipeline) {
    while let Some(item) = ring.next() {
        pipeline.raw(&item);
    }
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let (header, mut input) = Replay::open(&args.file)?;
    let filter = filter(&args.filters, true)?;
    let sink = open_sink(args.output.as_deref())?;
    let tracker = Tracker::new(header.boot_id_bytes(), filter);
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let mut pipeline = Pipeline::new(tracker, encoder, sink, None);
    let mut last_ts = 0;
    while let Some(event) = input.next_event()? {
        last_ts = last_ts.max(event.ts_ns());
        pipeline.event(&event);
        if pipeline.flush(last_ts).is_err() {
            return Ok(());
        }
    }
    if input.truncated {
        eprintln!(
            "observer: warning: {} ends inside a frame; replayed what was complete",
            args.file.display()
        );
    }
    let _ = pipeline.finish(last_ts);
    Ok(())
}
