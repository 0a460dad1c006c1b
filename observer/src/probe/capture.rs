//! The live capture as the rest of the agent sees it: the loaded probe and its ring buffer,
//! polled by tokio. Events come out as bytes; nothing here knows what they mean.

use std::{io, ops::Deref};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Probe, ProbeConfig, ProbeError};

pub struct Capture {
    pub probe: Probe,
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Capture {
    /// Loads and attaches the probe, and registers its ring with the current tokio runtime.
    ///
    /// # Errors
    /// As [`Probe::load`], and when the ring cannot be polled.
    pub fn start(config: ProbeConfig) -> Result<Self, ProbeError> {
        let (probe, ring) = Probe::load(config)?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until it is
        // dropped together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| ProbeError::Poll(e.into()))?;
        Ok(Self { probe, ring })
    }

    /// Waits until the kernel wakes us (the ring is a quarter full, or an event asked to).
    /// Readiness is cleared before the caller drains, so that a wake-up during the drain is
    /// not lost.
    ///
    /// # Errors
    /// When the ring cannot be polled.
    pub async fn wake(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// The next event the kernel wrote, if any. No syscall: the ring is mmapped.
    pub fn next_event(&mut self) -> Option<impl Deref<Target = [u8]> + '_> {
        self.ring.get_mut().next()
    }
}
