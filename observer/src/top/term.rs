//! The real terminal: raw mode and the alternate screen, always given back — on return, on
//! error (the guard's drop) and on panic (a hook that restores the screen and stderr before
//! the message prints). The screen thread (`display`) draws while capture may panic on its
//! own thread: a frame is written under [`WRITING`], and the terminal is given back under it
//! too, so that no frame lands on the shell's screen after it was given back.

use std::{
    io::{self, Stdout},
    sync::{
        Mutex, MutexGuard, Once, PoisonError, TryLockError,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use crossterm::{
    cursor::{Hide, Show},
    event::{self, Event, KeyEvent, KeyEventKind},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

use super::{
    input::{self, Action, Ui},
    model::Model,
    view,
};

/// The terminal while `observer top` owns it.
pub struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

static HOOK: Once = Once::new();

/// The original stderr, while stderr points at /dev/null (-1 otherwise): a warning printed
/// over the alternate screen would stay there until the cells under it change. Global, so
/// that the panic hook puts it back before the message is printed.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Whether the terminal is ours (raw, alternate screen) and not yet given back.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Held while the terminal is written: a frame, a resize, or giving it back.
static WRITING: Mutex<()> = Mutex::new(());

thread_local! {
    /// This thread holds [`WRITING`]: a panic while drawing must not wait for itself.
    static HOLDS_WRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on the terminal unless it was given back; `None` then.
fn writing<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _held = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
    if !TAKEN.load(Ordering::SeqCst) {
        return None;
    }
    HOLDS_WRITING.set(true);
    let r = f();
    HOLDS_WRITING.set(false);
    Some(r)
}

/// [`WRITING`], waited for at most a second: a frame blocked on a stalled terminal must not
/// keep a panicking thread from giving it back (the write would block as well, but raw mode
/// is left by an ioctl).
fn writing_lock() -> Option<MutexGuard<'static, ()>> {
    if HOLDS_WRITING.get() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match WRITING.try_lock() {
            Ok(held) => return Some(held),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

/// Gives the terminal back: cooked mode, the normal screen, the cursor, and stderr. Once: a
/// second leave of the alternate screen (the guard's drop, unwinding after the panic hook)
/// would move the cursor back above the panic message, and the shell would write over it.
fn restore() {
    if !TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let _held = writing_lock();
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    let fd = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is our duplicate of the original stderr, taken once.
        unsafe {
            libc::dup2(fd, libc::STDERR_FILENO);
            libc::close(fd);
        }
    }
}

impl Screen {
    /// Takes the terminal: raw mode, alternate screen, hidden cursor.
    ///
    /// # Errors
    /// When stdout is not a terminal or cannot be set up.
    pub fn enter() -> io::Result<Self> {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        TAKEN.store(true, Ordering::SeqCst);
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, Hide) {
            restore();
            return Err(e);
        }
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e);
            }
        };
        quiet_stderr();
        Ok(Self { terminal })
    }

    /// Draws a frame (resizing first when the terminal changed size).
    ///
    /// # Errors
    /// When the terminal cannot be written.
    pub fn draw(&mut self, model: &Model, ui: &mut Ui) -> io::Result<()> {
        let terminal = &mut self.terminal;
        writing(|| {
            terminal.autoresize()?;
            terminal.draw(|f| view::draw(f, model, ui)).map(|_| ())
        })
        .unwrap_or(Ok(()))
    }

    /// Applies the keys typed since the last call, waiting up to `wait` for the first.
    ///
    /// # Errors
    /// When the terminal cannot be read.
    pub fn input(&mut self, ui: &mut Ui, mut wait: Duration) -> io::Result<Action> {
        let mut action = Action::None;
        let mut resized = false;
        let mut apply = |key: KeyEvent, action: &mut Action| match ui.key(key) {
            Action::Quit => true,
            Action::Redraw => {
                *action = Action::Redraw;
                false
            }
            Action::None => false,
        };
        while event::poll(wait)? {
            wait = Duration::ZERO;
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release && apply(key, &mut action) => {
                    return Ok(Action::Quit);
                }
                Event::Resize(..) => {
                    let terminal = &mut self.terminal;
                    writing(|| terminal.autoresize()).unwrap_or(Ok(()))?;
                    action = Action::Redraw;
                    resized = true;
                }
                _ => {}
            }
        }
        // crossterm (0.29, mio source) returns the resize when the resize signal and typed
        // bytes are ready in the same edge-triggered poll, and the terminal's readiness is then
        // not reported again until more is typed: a key pressed right after a resize would
        // wait for the next one. Bytes still unread after a resize are read here instead.
        if resized {
            for key in input::keys_of(&unread_stdin()) {
                if apply(key, &mut action) {
                    return Ok(Action::Quit);
                }
            }
        }
        Ok(action)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// The bytes waiting on the terminal (stdin), read without blocking: only what `FIONREAD`
/// says is there.
fn unread_stdin() -> Vec<u8> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(libc::STDIN_FILENO, libc::FIONREAD, &raw mut n) } != 0 || n <= 0 {
        return Vec::new();
    }
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0).min(4096)];
    // SAFETY: reads at most `buf.len()` bytes into `buf`; that many are waiting, so it does
    // not block.
    let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(usize::try_from(got).unwrap_or(0));
    buf
}

/// Points stderr at /dev/null, keeping a duplicate of the original in [`SAVED_STDERR`].
fn quiet_stderr() {
    // SAFETY: plain fd calls; every fd opened here is checked and closed or kept.
    unsafe {
        let saved = libc::dup(libc::STDERR_FILENO);
        if saved < 0 {
            return;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null < 0 {
            libc::close(saved);
            return;
        }
        libc::dup2(null, libc::STDERR_FILENO);
        libc::close(null);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
}
