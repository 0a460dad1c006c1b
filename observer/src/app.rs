//! Wires the pipeline (probe → decode → track → sink) for a live run and for replay.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use observer_common::counter;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

mod chores;
mod snapshot;
pub mod top;

use crate::{
    check,
    cli::{Cli, Command, DEFAULT_MAX_CONNECTIONS, DEFAULT_QUEUE_MIB, Filters, ReplayArgs, RunArgs},
    control,
    decode::{self, Counters, Event},
    detect::{Alert, Detector},
    facts::{Fact, Purpose, SocketScan, Tracked, listeners::ListenerSample},
    gather::{self, Resolver},
    kernel,
    probe::{Probe, ProbeConfig},
    recording::{Header, Recorder, Replay},
    sink::{
        self, FLUSH_TIMEOUT, Sink, SinkError, Target,
        ndjson::{AgentRecord, Encoder},
    },
    track::{
        Filter, Tracker,
        record::{Output, RecordKind},
    },
};

/// The most NDJSON handed to an output at once: a quarter of the smallest queue.
const BATCH_BYTES: usize = 256 << 10;
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
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => return check::run(),
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

fn open_sink(output: Option<&Path>, queue_mib: u32) -> Result<Sink> {
    let target = output.map_or(Target::Stdout, |p| Target::File(p.to_owned()));
    Ok(Sink::open(target, (queue_mib as usize) << 20)?)
}

/// Decoded events in, NDJSON out; shared by the live run and replay.
struct Pipeline {
    tracker: Tracker,
    encoder: Encoder,
    /// Where NDJSON goes; none for `observer top`.
    sink: Option<Sink>,
    recorder: Option<Recorder>,
    outputs: Vec<Output>,
    /// Lines for the sink, and how many: records and alerts, then the observer's own lines
    /// (loss and agent), which a full queue takes a little past its bound.
    buf: Vec<u8>,
    lines: u64,
    own: Vec<u8>,
    own_lines: u64,
    scratch: Vec<u8>,
    warned_decode: bool,
    /// Looks up owners' executables and cgroups (live runs only: a replay has them recorded).
    resolver: Option<Resolver>,
    facts: Vec<Fact>,
    /// Processes that exec'd since the last drain: their TLS libraries are looked for one
    /// drain later, once the dynamic loader has mapped them.
    execs: Vec<u32>,
    /// Anomaly detection (`--anomalies`), and the alerts it raised since the last write.
    detector: Option<Detector>,
    alerts: Vec<Alert>,
    /// Listener samples (live runs whose rules need them) and the filter they pass.
    listeners: Option<gather::listeners::Listeners>,
    filter: Filter,
    /// What the written records add up to, for `observer top`'s rates.
    tally: Tally,
}

/// Counts over the records written since start.
#[derive(Debug, Clone, Default)]
struct Tally {
    closed: u64,
    resets: u64,
    retransmits: u64,
    /// The sockets whose closed record was written since `observer top` last looked; `None`
    /// (not kept) for other runs.
    closed_conns: Option<Vec<crate::top::feed::Closed>>,
    /// The alerts written since `observer top` last looked; `None` for other runs.
    alerts: Option<Vec<Alert>>,
}

impl Pipeline {
    fn new(
        tracker: Tracker,
        encoder: Encoder,
        sink: Option<Sink>,
        recorder: Option<Recorder>,
    ) -> Self {
        Self {
            tracker,
            encoder,
            sink,
            recorder,
            outputs: Vec::with_capacity(1024),
            buf: Vec::with_capacity(1 << 20),
            lines: 0,
            own: Vec::new(),
            own_lines: 0,
            scratch: Vec::new(),
            warned_decode: false,
            resolver: None,
            facts: Vec::new(),
            execs: Vec::new(),
            detector: None,
            alerts: Vec::new(),
            listeners: None,
            filter: Filter::default(),
            tally: Tally::default(),
        }
    }

    /// One event as the kernel wrote it.
    fn raw(&mut self, bytes: &[u8]) {
        let decoded = decode::decode(bytes);
        if let (Some(resolver), Ok(event)) = (&mut self.resolver, &decoded) {
            match event {
                Event::Closed(c) => resolver.owner_of(&c.state, c.header.ts_ns, &mut self.facts),
                Event::Exit(e) => resolver.exited((e.header.pid_tgid >> 32) as u32),
                _ => {}
            }
            self.record_facts();
        }
        if let Some(rec) = &mut self.recorder {
            rec.frame(bytes);
        }
        match decoded {
            Ok(event) => {
                self.tracker.ingest(&event, &mut self.outputs);
                if let (Event::SynackRetransmit(_), Some(_)) = (&event, &self.detector) {
                    self.detect(&event);
                }
                if let Event::Exec(e) = &event {
                    let pid = (e.header.pid_tgid >> 32) as u32;
                    self.execs.push(pid);
                    // The kernel's walk names the file, links resolved; when it could not,
                    // /proc does, as for processes older than the observer.
                    if let Some(resolver) = &mut self.resolver {
                        resolver.executed(pid, e.exe_len != 0, e.header.ts_ns, &mut self.facts);
                        self.record_facts();
                    }
                }
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

    /// Feeds the facts the resolver found, before the event that needed them.
    fn record_facts(&mut self) {
        for fact in std::mem::take(&mut self.facts) {
            self.event(&Event::Fact(Box::new(fact)));
        }
    }

    /// The kernel's socket table, read now: fed after the ring is drained, so that no socket
    /// that closed meanwhile comes back.
    fn table(&mut self, probe: &Probe, ring: &mut Ring) {
        let ts_ns = kernel::boottime_ns();
        let states = match probe.table() {
            Ok(states) => states,
            Err(err) => {
                eprintln!("observer: warning: {err:#}; peers and updates are incomplete");
                return;
            }
        };
        drain(ring, self);
        if let Some(resolver) = &mut self.resolver {
            for st in &states {
                resolver.owner_of(st, ts_ns, &mut self.facts);
            }
        }
        self.record_facts();
        self.event(&Event::Tracked(Tracked { ts_ns, states }));
    }

    /// The time-wait sockets of every namespace (or of `netns`), counted now for the detectors.
    ///
    /// `time_wait_pressure` weighs the census against the connection records emitted before
    /// it, and which records are due depends on the clock of the flush. So the ring is drained
    /// first, then everything due at the census's time is emitted, exactly as `replay` does
    /// before a census: otherwise a live run counted the records due by its last flush (wall
    /// time) and the replay those due by the last recorded event (a 6.12 guest, whose ring is
    /// drained late, had 60 against 40). Records still held then (for their peer's process)
    /// are not counted: the alert's `closed_locally` is what it had seen.
    fn time_wait_census(&mut self, netns: Option<u32>, ring: &mut Ring) -> Result<(), SinkError> {
        drain(ring, self);
        let ts_ns = kernel::boottime_ns();
        let flushed = self.flush(ts_ns);
        let (census, warnings) = gather::time_wait_census(ts_ns, netns);
        for w in warnings {
            eprintln!("observer: warning: {w}");
        }
        self.event(&Event::Fact(Box::new(Fact::TimeWait(census))));
        // Its alert goes out right after the records it counted.
        flushed.and_then(|()| self.write())
    }

    /// Every TCP socket of the host, listed now for `purpose`; returned for a snapshot.
    fn scan(&mut self, purpose: Purpose, ring: &mut Ring) -> Option<SocketScan> {
        let ts_ns = kernel::boottime_ns();
        // Holders name the owners the kernel does not know yet (a server socket before its
        // process touched it, a socket older than the observer).
        let (scan, warnings) = gather::scan(ts_ns, purpose, true);
        for w in warnings {
            eprintln!("observer: warning: {w}");
        }
        drain(ring, self);
        if let Some(resolver) = &mut self.resolver {
            resolver.scan(&scan, &mut self.facts);
        }
        self.record_facts();
        let kept = (purpose == Purpose::Snapshot).then(|| scan.clone());
        self.event(&Event::Fact(Box::new(Fact::Sockets(scan))));
        kept
    }

    /// A sample of every listener (in the `--netns` namespace only, when given), fed as a fact.
    fn listeners(&mut self, probe: &Probe, ring: &mut Ring) -> Option<ListenerSample> {
        let gatherer = self.listeners.as_mut()?;
        let counts = probe.listen_counts();
        let ts_ns = kernel::boottime_ns();
        let (sample, warnings) = gatherer.sample(ts_ns, self.filter.netns, counts.as_ref());
        for w in warnings {
            eprintln!("observer: warning: {w}");
        }
        drain(ring, self);
        let kept = sample.clone();
        self.event(&Event::Fact(Box::new(Fact::Listeners(sample))));
        Some(kept)
    }

    /// The answer to `observer snapshot`: NDJSON, a line per socket.
    fn snapshot(&mut self, probe: &Probe, ring: &mut Ring) -> Vec<u8> {
        self.table(probe, ring);
        let Some(scan) = self.scan(Purpose::Snapshot, ring) else {
            return Vec::new();
        };
        let now = scan.ts_ns;
        let mut out = Vec::new();
        for row in self.tracker.snapshot(&scan, now) {
            let line = sink::snapshot::json(&row, self.encoder.host(), now, self.encoder.offset());
            // Serialising a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &line);
            out.push(b'\n');
        }
        out
    }

    fn event(&mut self, event: &Event) {
        if let Some(rec) = &mut self.recorder {
            rec.event(event, &mut self.scratch);
        }
        // The counters' loss line also reports the output's drops (not recorded: they are
        // this run's, not the capture's).
        if let (Event::Counters(_), Some(sink)) = (event, &self.sink) {
            self.tracker.sink_dropped(sink.name(), sink.dropped());
        }
        self.tracker.ingest(event, &mut self.outputs);
        self.detect(event);
    }

    /// Table reads and counter reads are the detectors' clock: both are recorded, so a replay
    /// ticks them at the same times.
    fn detect(&mut self, event: &Event) {
        let Some(detector) = &mut self.detector else {
            return;
        };
        match event {
            Event::Tracked(t) => {
                let waiting = if detector.wants_table() {
                    self.tracker.stuck_sockets()
                } else {
                    Vec::new()
                };
                let settled = self.tracker.settled(t.ts_ns);
                detector.table(t.ts_ns, settled, &waiting, &mut self.alerts);
            }
            Event::Counters(c) => {
                let settled = self.tracker.settled(c.ts_ns);
                detector.tick(c.ts_ns, settled, &mut self.alerts);
            }
            Event::SynackRetransmit(s) => detector.synack(s),
            Event::Fact(f) => {
                if let Fact::TimeWait(census) = &**f {
                    let settled = self.tracker.settled(census.ts_ns);
                    detector.time_wait(census, settled, &mut self.alerts);
                }
                if let Fact::Listeners(sample) = &**f {
                    let filter = self.filter;
                    let admitted = sample.filtered(|netns, port| {
                        filter.netns.is_none_or(|n| n == netns)
                            && filter.port.is_none_or(|p| p == port)
                    });
                    detector.listeners(&admitted, &mut self.alerts);
                }
            }
            _ => {}
        }
    }

    /// Emits what is due at `now_ns` and writes it out.
    fn flush(&mut self, now_ns: u64) -> Result<(), SinkError> {
        self.tracker.flush_due(now_ns, &mut self.outputs);
        self.write()
    }

    fn write(&mut self) -> Result<(), SinkError> {
        for output in self.outputs.drain(..) {
            if let Some(detector) = &mut self.detector {
                detector.output(&output, &mut self.alerts);
            }
            if let Output::Connection(c) = &output
                && c.kind == RecordKind::Closed
            {
                self.tally.closed += 1;
                self.tally.resets += u64::from(c.resets_sent + c.resets_received);
                self.tally.retransmits += u64::from(c.retransmits.total());
                if let Some(closed) = &mut self.tally.closed_conns {
                    closed.push(crate::top::feed::Closed {
                        cookie: c.cookie,
                        pid: c.process.map(|p| p.pid),
                        comm: c.process.map(|p| p.name().to_owned()).unwrap_or_default(),
                        bytes: c.source.bytes + c.destination.bytes,
                    });
                }
            }
            if self.sink.is_some() {
                let (buf, lines) = if matches!(output, Output::Loss(_)) {
                    (&mut self.own, &mut self.own_lines)
                } else {
                    (&mut self.buf, &mut self.lines)
                };
                // Serialising these types cannot fail.
                let _ = self.encoder.write(&output, buf);
                *lines += 1;
            }
            // A big batch (a table read's updates, the records held at exit) goes in pieces
            // that a small queue can take.
            if self.buf.len() >= BATCH_BYTES
                && let Some(sink) = &mut self.sink
            {
                sink.write(&mut self.buf, std::mem::take(&mut self.lines), false)?;
            }
        }
        for alert in self.alerts.drain(..) {
            if self.sink.is_some() {
                let _ = self.encoder.alert(&alert, &mut self.buf);
                self.lines += 1;
            }
            if let Some(kept) = &mut self.tally.alerts {
                kept.push(alert);
            }
        }
        let Some(sink) = &mut self.sink else {
            return Ok(());
        };
        let records = sink.write(&mut self.buf, std::mem::take(&mut self.lines), false);
        let own = sink.write(&mut self.own, std::mem::take(&mut self.own_lines), true);
        records.and(own)
    }

    fn agent(&mut self, record: &AgentRecord) -> Result<(), SinkError> {
        if self.sink.is_some() {
            let _ = self.encoder.agent(record, &mut self.own);
            self.own_lines += 1;
        }
        self.write()
    }

    /// SIGHUP: the file output is opened again by its name (after logrotate's `mv`), and the
    /// `reopened` line is the new file's first.
    fn reopen(&mut self, agent: &mut AgentRecord) -> Result<(), SinkError> {
        if let Some(sink) = &self.sink {
            sink.reopen();
        }
        agent.action = "reopened";
        agent.ts_ns = kernel::boottime_ns();
        self.agent(agent)
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
    let sink = open_sink(args.output.as_deref(), args.queue_mib)?;
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
    let mut pipeline = Pipeline::new(tracker, encoder, Some(sink), recorder);
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
    tls_libraries(&probe, &mut pipeline);
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

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

async fn live(
    signals: Signals,
    probe: &mut Probe,
    ring: Ring,
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
        mut sighup,
    } = signals;
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut tls_tick = tokio::time::interval(TLS_RESCAN_EVERY);
    let mut chores = chores::Chores::new(header.netns);
    let mut counter_tick = tokio::time::interval(COUNTERS_EVERY);
    let updates = Duration::from_secs(args.update_interval.max(1));
    let mut update_tick = tokio::time::interval_at(tokio::time::Instant::now() + updates, updates);
    let control = control_listener(&args.control_socket);
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
        queue_mib: args.queue_mib,
        sinks: Vec::new(),
    };
    // The sockets that existed before: listed once the hooks are attached, so that a change
    // during the listing is seen by both, and deduplicated by socket cookie. Before the
    // `started` line: from then on, every socket is known.
    pipeline.scan(Purpose::Seed, ring.get_mut());
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
            _ = drain_tick.tick() => chores.drained(probe, pipeline, ring.get_mut()),
            _ = update_tick.tick(), if args.update_interval > 0 => {
                pipeline.table(probe, ring.get_mut());
                chores.last_table = Instant::now();
                pipeline.scan(Purpose::Update, ring.get_mut());
                pipeline.flush(kernel::boottime_ns())
            }
            _ = tls_tick.tick() => {
                let new = probe.tls_scan_all();
                tls_attached(probe, pipeline, &new);
                Ok(())
            }
            _ = counter_tick.tick() => {
                let _ = pipeline.listeners(probe, ring.get_mut());
                // The detectors' clock: what the ring holds goes first (`Tracker::settled`).
                drain(ring.get_mut(), pipeline);
                let counters = Counters { ts_ns: kernel::boottime_ns(), values: probe.counters() };
                pipeline.event(&Event::Counters(counters));
                pipeline.write()
            }
            Ok((stream, _)) = accept(control.as_ref()) => {
                answer(stream, probe, pipeline, ring.get_mut());
                pipeline.flush(kernel::boottime_ns())
            }
            _ = sigusr1.recv() => toggle(probe, ring.get_mut(), pipeline, &mut agent, false),
            _ = sigusr2.recv() => toggle(probe, ring.get_mut(), pipeline, &mut agent, true),
            _ = sighup.recv() => pipeline.reopen(&mut agent),
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            () = &mut deadline => break "--duration elapsed",
        };
        if let Err(SinkError::Closed) = result {
            break "output closed";
        }
    };
    stop(probe, pipeline, ring.get_mut(), agent, outcome);
    Ok(())
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
    probe: &Probe,
    pipeline: &mut Pipeline,
    ring: &mut Ring,
    mut agent: AgentRecord,
    outcome: &'static str,
) {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    if let Some(sink) = &mut pipeline.sink {
        sink.closing(deadline);
    }
    drain(ring, pipeline);
    if outcome != "output closed" {
        pipeline.table(probe, ring);
        pipeline.scan(Purpose::Final, ring);
    }
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
    agent.sinks = pipeline
        .sink
        .iter()
        .map(|s| (s.name(), s.totals()))
        .collect();
    if !closed {
        let _ = pipeline.agent(&agent);
    }
    let totals = pipeline
        .sink
        .as_mut()
        .map(|s| s.finish(Some(deadline)))
        .unwrap_or_default();
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
            n => format!(", {n} lines dropped by a full output queue"),
        },
        match totals.unwritten_bytes {
            0 => String::new(),
            n => format!(
                ", {n} bytes not written within {} s",
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

/// Answers one `observer snapshot` (blocking, bounded by `control::TIMEOUT` each way).
fn answer(stream: tokio::net::UnixStream, probe: &Probe, pipeline: &mut Pipeline, ring: &mut Ring) {
    let result = stream.into_std().and_then(|stream| {
        stream.set_nonblocking(false)?;
        let request = control::read_request(&stream)?;
        let body = if request == "snapshot" {
            pipeline.snapshot(probe, ring)
        } else {
            format!("{{\"error\":\"unknown request {request:?}\"}}\n").into_bytes()
        };
        stream.set_write_timeout(Some(control::TIMEOUT))?;
        std::io::Write::write_all(&mut &stream, &body)
    });
    if let Err(err) = result {
        eprintln!("observer: warning: a snapshot request failed: {err}");
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
    probe: &mut Probe,
    ring: &mut Ring,
    pipeline: &mut Pipeline,
    agent: &mut AgentRecord,
    resume: bool,
) -> Result<(), SinkError> {
    let done = if resume {
        probe.resume()
    } else {
        probe.pause(|| drain(ring, pipeline))
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
fn drain(ring: &mut Ring, pipeline: &mut Pipeline) {
    while let Some(item) = ring.next() {
        pipeline.raw(&item);
    }
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let (header, mut input) = Replay::open(&args.file)?;
    let mut filter = filter(&args.filters, true)?;
    if filter.netns.is_none() && filter.port.is_none() {
        filter.netns = header.netns;
        filter.port = header.port;
    }
    let sink = open_sink(args.output.as_deref(), DEFAULT_QUEUE_MIB)?.lossless();
    let tracker = Tracker::new(
        header.boot_id_bytes(),
        filter,
        DEFAULT_MAX_CONNECTIONS as usize,
    );
    let encoder = Encoder::new(header.host.clone(), header.boot_to_unix_ns);
    let mut pipeline = Pipeline::new(tracker, encoder, Some(sink), None);
    pipeline.detector = args
        .anomalies
        .config()
        .map(|c| Detector::new(&c).on_boot(header.boot_id_bytes()));
    pipeline.filter = filter;
    let mut last_ts = 0;
    while let Some(event) = input.next_event()? {
        last_ts = last_ts.max(event.ts_ns());
        // What was due at a census's time is emitted before it, as the live run did.
        if let Event::Fact(f) = &event
            && let Fact::TimeWait(census) = &**f
            && pipeline.flush(census.ts_ns).is_err()
        {
            return Ok(());
        }
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
    if let Some(sink) = &mut pipeline.sink {
        sink.finish(None);
    }
    Ok(())
}
