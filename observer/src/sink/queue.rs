//! The byte-bounded queue between the pipeline and one output's writer thread.
//!
//! The pipeline never waits on it: a batch that does not fit is dropped and counted, so a slow
//! output costs only its own lines. Lines the stream must carry (the observer's own loss and
//! agent lines) may go past the bound by [`KEEP_SLACK`], so that a reader who falls behind
//! still learns what it missed. Emptied buffers come back to the pipeline for reuse.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard},
    time::Instant,
};

/// How far past its bound the queue takes lines that must be kept.
pub const KEEP_SLACK: usize = 1 << 20;

/// What the writer is asked to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// Complete NDJSON lines, and how many.
    Lines(Vec<u8>, u64),
    /// Reopen the output by its name (after a logrotate `mv`).
    Reopen,
}

/// What [`Queue::push`] does with a batch that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Drops it and counts its lines (a live capture).
    Drop,
    /// Takes it up to [`KEEP_SLACK`] past the bound, else drops it (the observer's own lines).
    Keep,
    /// Waits for room until the deadline, if any, then drops (a replay, with no capture to
    /// protect; the end of a run, bounded by its flush timeout).
    Wait(Option<Instant>),
}

/// How long [`Queue::pop`] waits for an item.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    No,
    Until(Instant),
    Forever,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Lines accepted into the queue.
    pub queued: u64,
    /// Lines dropped because the queue was full, or refused for good by the destination.
    pub dropped: u64,
    /// Bytes waiting in the queue.
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    counts: Counts,
    free: Vec<Vec<u8>>,
    /// No more items will come.
    closed: bool,
}

pub struct Queue {
    limit: usize,
    state: Mutex<State>,
    ready: Condvar,
    room: Condvar,
}

impl Queue {
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues the `lines` lines in `buf` (leaving `buf` empty, with a recycled buffer's
    /// capacity), or drops them as `full` says. Returns whether they were queued.
    pub fn push(&self, buf: &mut Vec<u8>, lines: u64, full: Full) -> bool {
        if buf.is_empty() {
            return true;
        }
        let (limit, deadline) = match full {
            Full::Keep => (self.limit + KEEP_SLACK, None),
            Full::Drop => (self.limit, None),
            Full::Wait(deadline) => (self.limit, deadline),
        };
        let waits = matches!(full, Full::Wait(_));
        let mut state = self.lock();
        // A batch larger than the whole queue is taken alone rather than waited for forever.
        while waits
            && !state.closed
            && state.counts.bytes > 0
            && state.counts.bytes + buf.len() > limit
        {
            state = match deadline {
                None => self
                    .room
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.room
                        .wait_timeout(state, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
        let fits = state.counts.bytes + buf.len() <= limit || (waits && state.counts.bytes == 0);
        if state.closed || !fits {
            state.counts.dropped += lines;
            buf.clear();
            return false;
        }
        let spare = state.free.pop().unwrap_or_default();
        let full = std::mem::replace(buf, spare);
        state.counts.bytes += full.len();
        state.counts.queued += lines;
        state.items.push_back(Item::Lines(full, lines));
        drop(state);
        self.ready.notify_one();
        true
    }

    pub fn reopen(&self) {
        self.lock().items.push_back(Item::Reopen);
        self.ready.notify_one();
    }

    /// No more items: the writer ends once it has written what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// The next item; `None` when the wait ended first, or the queue is closed and empty.
    pub fn pop(&self, wait: Wait) -> Option<Item> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                if let Item::Lines(buf, _) = &item {
                    state.counts.bytes -= buf.len();
                    self.room.notify_all();
                }
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = match wait {
                Wait::No => return None,
                Wait::Forever => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Wait::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Gives a written buffer back for reuse (a few are kept; their memory counts as free).
    pub fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut state = self.lock();
        if state.free.len() < 4 {
            state.free.push(buf);
        }
    }

    /// Counts `lines` that never reached the queue as dropped (their reader had gone).
    pub fn drop_lines(&self, lines: u64) {
        self.lock().counts.dropped += lines;
    }

    /// Counts `lines` taken off the queue as dropped: the destination refused them for good.
    pub fn reject(&self, lines: u64) {
        if lines > 0 {
            let mut state = self.lock();
            state.counts.queued -= lines;
            state.counts.dropped += lines;
        }
    }

    #[must_use]
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn lines(n: usize, width: usize) -> Vec<u8> {
        let mut line = vec![b'x'; width - 1];
        line.push(b'\n');
        line.repeat(n)
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_their_lines() {
        let q = Queue::new(100);
        let mut buf = lines(5, 10);
        assert!(q.push(&mut buf, 5, Full::Drop));
        assert!(buf.is_empty());
        let mut buf = lines(5, 10);
        assert!(q.push(&mut buf, 5, Full::Drop), "exactly at the bound");
        let mut buf = lines(1, 10);
        assert!(!q.push(&mut buf, 1, Full::Drop));
        assert!(buf.is_empty(), "dropped lines are not sent again");
        assert_eq!(
            q.counts(),
            Counts {
                queued: 10,
                dropped: 1,
                bytes: 100
            }
        );
    }

    #[test]
    fn lines_the_destination_refused_count_as_dropped_not_as_queued() {
        let q = Queue::new(100);
        let mut buf = lines(5, 10);
        q.push(&mut buf, 5, Full::Drop);
        assert!(q.pop(Wait::No).is_some());
        q.reject(3);
        q.reject(0);
        assert_eq!((q.counts().queued, q.counts().dropped), (2, 3));
    }

    #[test]
    fn kept_lines_pass_a_full_queue_up_to_the_slack() {
        let q = Queue::new(10);
        let mut buf = lines(1, 10);
        assert!(q.push(&mut buf, 1, Full::Drop));
        let mut buf = lines(1, 10);
        assert!(!q.push(&mut buf, 1, Full::Drop));
        let mut buf = lines(1, 10);
        assert!(q.push(&mut buf, 1, Full::Keep));
        let mut buf = vec![b'\n'; KEEP_SLACK];
        assert!(!q.push(&mut buf, 1, Full::Keep), "past the slack");
        assert_eq!((q.counts().queued, q.counts().dropped), (2, 2));
    }

    #[test]
    fn items_come_out_in_order_and_free_their_bytes() {
        let q = Queue::new(1000);
        let mut buf = b"a\n".to_vec();
        q.push(&mut buf, 1, Full::Drop);
        q.reopen();
        let mut buf = b"b\nc\n".to_vec();
        q.push(&mut buf, 2, Full::Keep);
        assert_eq!(q.pop(Wait::No), Some(Item::Lines(b"a\n".to_vec(), 1)));
        assert_eq!(q.pop(Wait::No), Some(Item::Reopen));
        assert_eq!(q.counts().bytes, 4);
        assert_eq!(q.pop(Wait::No), Some(Item::Lines(b"b\nc\n".to_vec(), 2)));
        assert_eq!(q.counts().bytes, 0);
        assert_eq!(q.pop(Wait::No), None);
    }

    #[test]
    fn a_waiting_push_waits_for_room_and_takes_an_oversized_batch_alone() {
        let q = Arc::new(Queue::new(10));
        let mut buf = lines(1, 10);
        assert!(q.push(&mut buf, 1, Full::Wait(None)));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                q.pop(Wait::No)
            })
        };
        let mut buf = lines(3, 10);
        assert!(q.push(&mut buf, 3, Full::Wait(None)), "waited, then alone");
        assert_eq!(
            writer.join().expect("writer"),
            Some(Item::Lines(lines(1, 10), 1))
        );
        assert_eq!(
            q.counts(),
            Counts {
                queued: 4,
                dropped: 0,
                bytes: 30
            }
        );
    }

    #[test]
    fn a_push_with_a_deadline_drops_once_it_passes() {
        let q = Queue::new(10);
        let mut buf = lines(1, 10);
        assert!(q.push(&mut buf, 1, Full::Drop));
        let until = Instant::now() + Duration::from_millis(20);
        let mut buf = lines(1, 10);
        assert!(!q.push(&mut buf, 1, Full::Wait(Some(until))));
        assert!(Instant::now() >= until);
        assert_eq!(q.counts().dropped, 1);
    }

    #[test]
    fn buffers_are_recycled_with_their_capacity() {
        let q = Queue::new(1000);
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(b"a\n");
        q.push(&mut buf, 1, Full::Drop);
        let Some(Item::Lines(written, _)) = q.pop(Wait::No) else {
            panic!("a batch")
        };
        q.recycle(written);
        let mut buf = b"b\n".to_vec();
        q.push(&mut buf, 1, Full::Drop);
        assert!(buf.is_empty());
        assert!(buf.capacity() >= 512, "the recycled buffer came back");
    }

    #[test]
    fn a_closed_queue_drains_then_ends_and_takes_nothing_more() {
        let q = Queue::new(1000);
        let mut buf = b"a\n".to_vec();
        q.push(&mut buf, 1, Full::Drop);
        q.close();
        let mut buf = b"b\n".to_vec();
        assert!(!q.push(&mut buf, 1, Full::Keep));
        assert!(q.pop(Wait::Forever).is_some());
        assert_eq!(q.pop(Wait::Forever), None, "closed and empty: no wait");
        assert_eq!(q.counts().dropped, 1);
    }

    #[test]
    fn a_waiting_pop_wakes_for_a_push_and_gives_up_at_its_deadline() {
        let q = Arc::new(Queue::new(1000));
        let until = Instant::now() + Duration::from_millis(20);
        assert_eq!(q.pop(Wait::Until(until)), None);
        assert!(Instant::now() >= until);
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let mut buf = b"a\n".to_vec();
                q.push(&mut buf, 1, Full::Drop);
            })
        };
        assert_eq!(q.pop(Wait::Forever), Some(Item::Lines(b"a\n".to_vec(), 1)));
        pusher.join().expect("pusher");
    }
}
