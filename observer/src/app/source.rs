//! Where the pipeline's events come from: the live capture, or a recording. `run`, `replay`
//! and `top` feed the one pipeline through [`Source`], so a replay runs exactly the code a live
//! run does.

use super::Pipeline;
use crate::{
    decode::Event,
    facts::Fact,
    kernel,
    probe::Capture,
    recording::{RecordingError, Replay},
};

pub(super) trait Source {
    /// Hands `pipeline` every event ready now and writes out what they made due; `Ok(false)`
    /// once nothing more will come: the recording ended, or the output's reader went away.
    ///
    /// # Errors
    /// When the source cannot be read.
    fn feed(&mut self, pipeline: &mut Pipeline) -> Result<bool, RecordingError>;
}

impl Source for Capture {
    fn feed(&mut self, pipeline: &mut Pipeline) -> Result<bool, RecordingError> {
        drain(self, pipeline);
        Ok(pipeline.flush(kernel::boottime_ns()).is_ok())
    }
}

/// Feeds every event waiting in the ring to the pipeline. No syscalls: the ring is mmapped.
pub(super) fn drain(capture: &mut Capture, pipeline: &mut Pipeline) {
    while let Some(item) = capture.next_event() {
        pipeline.raw(&item);
    }
}

/// A recording (`run --record`), an event per feed; its clock is the events' own.
pub(super) struct Recording {
    input: Replay,
    /// The latest event time so far: what is due by then is written.
    pub(super) last_ts: u64,
    /// The event just fed, for `top`'s read model.
    pub(super) last: Option<Event>,
    /// Every event was fed (rather than the output's reader going away first).
    pub(super) ended: bool,
}

impl Recording {
    pub(super) fn new(input: Replay) -> Self {
        Self {
            input,
            last_ts: 0,
            last: None,
            ended: false,
        }
    }

    /// Whether the file ended inside a frame.
    pub(super) fn truncated(&self) -> bool {
        self.input.truncated
    }
}

impl Source for Recording {
    fn feed(&mut self, pipeline: &mut Pipeline) -> Result<bool, RecordingError> {
        let Some(event) = self.input.next_event()? else {
            self.last = None;
            self.ended = true;
            return Ok(false);
        };
        self.last_ts = self.last_ts.max(event.ts_ns());
        // What was due at a census's time is emitted before it, as the live run did.
        if let Event::Fact(f) = &event
            && let Fact::TimeWait(census) = &**f
            && pipeline.flush(census.ts_ns).is_err()
        {
            return Ok(false);
        }
        pipeline.event(&event);
        let open = pipeline.flush(self.last_ts).is_ok();
        self.last = Some(event);
        Ok(open)
    }
}
