//! The pipeline: decoded events in (live or recorded), tracked, detected, and written to the
//! sink; shared by `run`, `replay` and `top`.

use crate::{
    decode::{self, Event},
    detect::{Alert, Detector},
    facts::{Fact, Purpose, SocketScan, Tracked, listeners::ListenerSample},
    gather::{self, Resolver},
    kernel,
    probe::Capture,
    recording::Recorder,
    sink::{
        self, Sink, SinkError,
        ndjson::{AgentRecord, Encoder},
    },
    track::{Filter, Tracker, record::Output},
};

use super::drain;

/// Decoded events in, NDJSON out; shared by the live run and replay.
pub(super) struct Pipeline {
    pub(super) tracker: Tracker,
    pub(super) encoder: Encoder,
    /// Where records go: the NDJSON outputs, or `top`'s read model.
    pub(super) sinks: Vec<Box<dyn Sink>>,
    pub(super) recorder: Option<Recorder>,
    pub(super) outputs: Vec<Output>,
    /// One line, encoded once for every sink.
    line: Vec<u8>,
    pub(super) scratch: Vec<u8>,
    pub(super) warned_decode: bool,
    /// Looks up owners' executables and cgroups (live runs only: a replay has them recorded).
    pub(super) resolver: Option<Resolver>,
    pub(super) facts: Vec<Fact>,
    /// Processes that exec'd since the last drain: their TLS libraries are looked for one
    /// drain later, once the dynamic loader has mapped them.
    pub(super) execs: Vec<u32>,
    /// Anomaly detection (`--anomalies`), and the alerts it raised since the last write.
    pub(super) detector: Option<Detector>,
    pub(super) alerts: Vec<Alert>,
    /// Listener samples (live runs whose rules need them) and the filter they pass.
    pub(super) listeners: Option<gather::listeners::Listeners>,
    pub(super) filter: Filter,
}

impl Pipeline {
    pub(super) fn new(
        tracker: Tracker,
        encoder: Encoder,
        sinks: Vec<Box<dyn Sink>>,
        recorder: Option<Recorder>,
    ) -> Self {
        Self {
            tracker,
            encoder,
            sinks,
            recorder,
            outputs: Vec::with_capacity(1024),
            line: Vec::with_capacity(4096),
            scratch: Vec::new(),
            warned_decode: false,
            resolver: None,
            facts: Vec::new(),
            execs: Vec::new(),
            detector: None,
            alerts: Vec::new(),
            listeners: None,
            filter: Filter::default(),
        }
    }

    /// One event as the kernel wrote it.
    pub(super) fn raw(&mut self, bytes: &[u8]) {
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
    pub(super) fn record_facts(&mut self) {
        for fact in std::mem::take(&mut self.facts) {
            self.event(&Event::Fact(Box::new(fact)));
        }
    }

    /// The kernel's socket table, read now: fed after the ring is drained, so that no socket
    /// that closed meanwhile comes back.
    pub(super) fn table(&mut self, capture: &mut Capture) {
        let ts_ns = kernel::boottime_ns();
        let states = match capture.probe.table() {
            Ok(states) => states,
            Err(err) => {
                eprintln!("observer: warning: {err:#}; peers and updates are incomplete");
                return;
            }
        };
        drain(capture, self);
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
    pub(super) fn time_wait_census(
        &mut self,
        netns: Option<u32>,
        capture: &mut Capture,
    ) -> Result<(), SinkError> {
        drain(capture, self);
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
    pub(super) fn scan(&mut self, purpose: Purpose, capture: &mut Capture) -> Option<SocketScan> {
        let ts_ns = kernel::boottime_ns();
        // Holders name the owners the kernel does not know yet (a server socket before its
        // process touched it, a socket older than the observer).
        let (scan, warnings) = gather::scan(ts_ns, purpose, true);
        for w in warnings {
            eprintln!("observer: warning: {w}");
        }
        drain(capture, self);
        if let Some(resolver) = &mut self.resolver {
            resolver.scan(&scan, &mut self.facts);
        }
        self.record_facts();
        let kept = (purpose == Purpose::Snapshot).then(|| scan.clone());
        self.event(&Event::Fact(Box::new(Fact::Sockets(scan))));
        kept
    }

    /// A sample of every listener (in the `--netns` namespace only, when given), fed as a fact.
    pub(super) fn listeners(&mut self, capture: &mut Capture) -> Option<ListenerSample> {
        let gatherer = self.listeners.as_mut()?;
        let counts = capture.probe.listen_counts();
        let ts_ns = kernel::boottime_ns();
        let (sample, warnings) = gatherer.sample(ts_ns, self.filter.netns, counts.as_ref());
        for w in warnings {
            eprintln!("observer: warning: {w}");
        }
        drain(capture, self);
        let kept = sample.clone();
        self.event(&Event::Fact(Box::new(Fact::Listeners(sample))));
        Some(kept)
    }

    /// The answer to `observer snapshot`: NDJSON, a line per socket.
    pub(super) fn snapshot(&mut self, capture: &mut Capture) -> Vec<u8> {
        self.table(capture);
        let Some(scan) = self.scan(Purpose::Snapshot, capture) else {
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

    pub(super) fn event(&mut self, event: &Event) {
        if let Some(rec) = &mut self.recorder {
            rec.event(event, &mut self.scratch);
        }
        // The counters' loss line also reports the outputs' drops (not recorded: they are
        // this run's, not the capture's).
        if let Event::Counters(_) = event {
            for output in self.sinks.iter_mut().filter_map(|s| s.output()) {
                self.tracker.sink_dropped(output.name(), output.dropped());
            }
        }
        self.tracker.ingest(event, &mut self.outputs);
        self.detect(event);
    }

    /// Table reads and counter reads are the detectors' clock: both are recorded, so a replay
    /// ticks them at the same times.
    pub(super) fn detect(&mut self, event: &Event) {
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
    pub(super) fn flush(&mut self, now_ns: u64) -> Result<(), SinkError> {
        self.tracker.flush_due(now_ns, &mut self.outputs);
        self.write()
    }

    pub(super) fn write(&mut self) -> Result<(), SinkError> {
        let lines = self.sinks.iter().any(|s| s.wants_lines());
        for output in self.outputs.drain(..) {
            if let Some(detector) = &mut self.detector {
                detector.output(&output, &mut self.alerts);
            }
            self.line.clear();
            if lines {
                // Serialising these types cannot fail.
                let _ = self.encoder.write(&output, &mut self.line);
            }
            for sink in &mut self.sinks {
                sink.record(&output, &self.line)?;
            }
        }
        for alert in self.alerts.drain(..) {
            self.line.clear();
            if lines {
                let _ = self.encoder.alert(&alert, &mut self.line);
            }
            for sink in &mut self.sinks {
                sink.alert(&alert, &self.line);
            }
        }
        let mut result = Ok(());
        for sink in &mut self.sinks {
            result = result.and(sink.write());
        }
        // One output whose reader went away does not end the run; the last one does.
        if !self.sinks.is_empty() && self.sinks.iter().all(|s| s.closed()) {
            return Err(SinkError::Closed);
        }
        result
    }

    pub(super) fn agent(&mut self, record: &AgentRecord) -> Result<(), SinkError> {
        self.line.clear();
        let _ = self.encoder.agent(record, &mut self.line);
        for sink in &mut self.sinks {
            sink.agent(&self.line);
        }
        self.write()
    }

    /// SIGHUP: every file output is opened again by its name (after logrotate's `mv`), and
    /// the `reopened` line is the new file's first.
    pub(super) fn reopen(&mut self, agent: &mut AgentRecord) -> Result<(), SinkError> {
        for output in self.sinks.iter_mut().filter_map(|s| s.output()) {
            output.reopen();
        }
        agent.action = "reopened";
        agent.ts_ns = kernel::boottime_ns();
        self.agent(agent)
    }

    pub(super) fn finish(&mut self, ts_ns: u64) -> Result<(), SinkError> {
        self.tracker.finish(ts_ns, &mut self.outputs);
        let result = self.write();
        if let Some(rec) = &mut self.recorder {
            rec.flush();
        }
        result
    }
}
