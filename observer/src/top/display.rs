//! The screen's own thread. `observer top` draws frames and reads keys there, so a slow or
//! stalled terminal (a congested ssh session, a paused `tmux` pane, Ctrl-S) never delays the
//! capture thread's draining of the ring buffer: rendering never blocks capture.
//!
//! Capture hands each refreshed model over through a one-slot mailbox, and never waits for
//! the screen: a model not drawn yet is replaced by the newer one. The screen asks capture to
//! stop (`q`, Ctrl-C, or a terminal error) through a [`Notify`].

use std::{
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::{
    Screen,
    input::{Action, Ui},
    model::Model,
};

/// How long the screen waits for a key before it looks for a new model, and so the most a
/// refresh waits to be drawn.
const TICK: Duration = Duration::from_millis(50);

/// How long capture waits for the screen to give the terminal back at exit.
const GIVE_BACK: Duration = Duration::from_secs(2);

/// Durations of a repeated step (frames, refreshes), for the summary at exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub count: u64,
    pub total: Duration,
    pub max: Duration,
}

impl Timing {
    pub fn add(&mut self, took: Duration) {
        self.count += 1;
        self.total += took;
        self.max = self.max.max(took);
    }

    /// "12 × mean 3.1 ms, max 9.8 ms".
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean = if self.count == 0 {
            0.0
        } else {
            #[expect(clippy::cast_precision_loss, reason = "a mean for people")]
            let n = self.count as f64;
            ms(self.total) / n
        };
        format!(
            "{} × mean {mean:.1} ms, max {:.1} ms",
            self.count,
            ms(self.max)
        )
    }
}

/// What capture and the screen share.
#[derive(Default)]
struct Shared {
    /// The newest model not drawn yet.
    next: Mutex<Option<Model>>,
    /// The display is paused (`p`): capture need not build models.
    paused: AtomicBool,
    /// Capture is stopping: the screen gives the terminal back and returns.
    stop: AtomicBool,
    /// The screen wants capture to stop.
    quit: Notify,
}

/// The screen thread, seen from capture.
pub struct Display {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<Timing>>>,
    /// Closed when the thread returns (or unwinds), for a join with a deadline.
    finished: mpsc::Receiver<()>,
}

impl Display {
    /// Starts drawing `model` on `screen` from a thread of its own.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(screen: Screen, model: Model) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (done, finished) = mpsc::channel::<()>();
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("top-screen".into())
            .spawn(move || {
                let _done = done;
                // Capture stops with the screen, whether it returns or panics.
                let _quit = QuitOnDrop(&theirs);
                screen_loop(screen, model, &theirs)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
            finished,
        })
    }

    /// Hands a refreshed model to the screen, without waiting for it.
    pub fn show(&self, model: Model) {
        *self
            .shared
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(model);
    }

    /// Whether the display is paused, so that building a model can wait.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::Relaxed)
    }

    /// Resolves when the screen wants capture to stop (`q`, Ctrl-C, an error, a panic).
    pub async fn quit(&self) {
        self.shared.quit.notified().await;
    }

    /// Stops the screen, which gives the terminal back, and returns its frame times.
    ///
    /// # Errors
    /// The terminal error that stopped the screen, a panic of its thread, or a terminal that
    /// took no output for [`GIVE_BACK`] (then the thread is left behind, blocked in a write,
    /// and the terminal may need `reset`).
    pub fn stop(mut self) -> io::Result<Timing> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if self.finished.recv_timeout(GIVE_BACK) == Err(mpsc::RecvTimeoutError::Timeout) {
            self.thread = None;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the terminal took no output for 2 s, so it may still be in raw mode on the \
                 alternate screen: run `reset` if the shell looks wrong",
            ));
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the screen thread panicked")),
            None => Ok(Timing::default()),
        }
    }
}

impl Drop for Display {
    /// Unwinding from a panic in capture: the screen is stopped (the panic hook has given the
    /// terminal back already), and waited for a little.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.stop.store(true, Ordering::SeqCst);
            let _ = self.finished.recv_timeout(GIVE_BACK);
        }
    }
}

struct QuitOnDrop<'a>(&'a Shared);

impl Drop for QuitOnDrop<'_> {
    fn drop(&mut self) {
        self.0.quit.notify_one();
    }
}

fn screen_loop(mut screen: Screen, mut model: Model, shared: &Shared) -> io::Result<Timing> {
    let mut ui = Ui::default();
    let mut frames = Timing::default();
    let mut redraw = true;
    while !shared.stop.load(Ordering::SeqCst) {
        if redraw {
            let start = Instant::now();
            screen.draw(&model, &mut ui)?;
            frames.add(start.elapsed());
        }
        redraw = match screen.input(&mut ui, TICK)? {
            Action::Quit => break,
            Action::Redraw => true,
            Action::None => false,
        };
        shared.paused.store(ui.paused, Ordering::Relaxed);
        let next = shared
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(next) = next
            && !ui.paused
        {
            model = next;
            redraw = true;
        }
    }
    drop(screen);
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_sums_up_mean_and_max() {
        let mut t = Timing::default();
        assert_eq!(t.summary(), "0 × mean 0.0 ms, max 0.0 ms");
        for ms in [1, 2, 6] {
            t.add(Duration::from_millis(ms));
        }
        assert_eq!(t.summary(), "3 × mean 3.0 ms, max 6.0 ms");
    }
}
