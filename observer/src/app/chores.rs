//! What `run` does between drains: the chores of the drain timer.

use std::time::{Duration, Instant};

use super::{Pipeline, TABLE_EVERY, drain, tls_attached};
use crate::{detect::Detector, kernel, probe::Capture, sink::SinkError};

/// How often the kernel's socket table is read for the detectors that need it.
const DETECT_TABLE_EVERY: Duration = Duration::from_secs(1);
/// How often the time-wait sockets are counted for `time_wait_pressure`.
const TIME_WAIT_EVERY: Duration = Duration::from_secs(2);

/// What `run` does after each drain timer: TLS libraries of new processes, and the table
/// reads and censuses that are due.
pub struct Chores {
    netns: Option<u32>,
    exec_ready: Vec<u32>,
    pub last_table: Instant,
    last_census: Instant,
}

impl Chores {
    pub fn new(netns: Option<u32>) -> Self {
        Self {
            netns,
            exec_ready: Vec::new(),
            last_table: Instant::now(),
            last_census: Instant::now(),
        }
    }

    pub fn drained(
        &mut self,
        capture: &mut Capture,
        pipeline: &mut Pipeline,
    ) -> Result<(), SinkError> {
        drain(capture, pipeline);
        let new = capture.probe.tls_scan_pids(&self.exec_ready);
        self.exec_ready = std::mem::take(&mut pipeline.execs);
        tls_attached(&capture.probe, pipeline, &new);
        let detector_wants = pipeline
            .detector
            .as_ref()
            .is_some_and(Detector::wants_table)
            && self.last_table.elapsed() >= DETECT_TABLE_EVERY;
        if detector_wants
            || (pipeline.tracker.wants_table() && self.last_table.elapsed() >= TABLE_EVERY)
        {
            pipeline.table(capture);
            self.last_table = Instant::now();
        }
        let census = if pipeline
            .detector
            .as_ref()
            .is_some_and(Detector::wants_time_wait)
            && self.last_census.elapsed() >= TIME_WAIT_EVERY
        {
            self.last_census = Instant::now();
            pipeline.time_wait_census(self.netns, capture)
        } else {
            Ok(())
        };
        census.and_then(|()| pipeline.flush(kernel::boottime_ns()))
    }
}
