//! Raw event bytes (from the ring buffer or a recording) → plain Rust events.
//!
//! Every event starts with [`EventHeader`]; its `kind` selects the layout and its `len` must be
//! exactly that layout's size. Anything else is an error, never a panic, so a corrupt
//! recording or a kernel/userspace ABI mismatch is reported, not misread.

use std::mem::size_of;

use observer_common::{
    ConnClosed, ConnState, EventHeader, ProcessExec, ProcessExit, Reset, SynackRetransmit, TlsAlpn,
    TlsHandshake, TlsHello, Transition, counter, kind,
};
use thiserror::Error;

use crate::facts::{Fact, Tracked};

/// Kind of the counter snapshots userspace writes into recordings. Kernel kinds stay below
/// 0x8000.
pub const KIND_COUNTERS: u16 = 0x8001;
/// A [`Tracked`] table: the header, then its `ConnState`s back to back.
pub const KIND_TRACKED: u16 = 0x8002;
/// A [`Fact`]: the header, then its JSON.
pub const KIND_FACT: u16 = 0x8003;

/// A snapshot of the kernel's per-CPU counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub ts_ns: u64,
    pub values: [u64; counter::COUNT as usize],
}

impl Counters {
    /// Events the kernel side lost: a full ring, a full map, hook runs skipped.
    #[must_use]
    pub fn lost(&self) -> u64 {
        [
            counter::RING_FULL,
            counter::MAP_FULL,
            counter::RECURSION_MISSES,
        ]
        .iter()
        .map(|&i| self.values[i as usize])
        .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "events are decoded one at a time and consumed at once; a TLS hello is 1128 bytes"
)]
pub enum Event {
    Closed(ConnClosed),
    Transition(Transition),
    Reset(Reset),
    SynackRetransmit(SynackRetransmit),
    Counters(Counters),
    Exec(ProcessExec),
    Exit(ProcessExit),
    /// Userspace read the kernel's socket table.
    Tracked(Tracked),
    /// Userspace learnt something outside the ring.
    Fact(Box<Fact>),
    TlsHello(TlsHello),
    TlsHandshake(TlsHandshake),
    TlsAlpn(TlsAlpn),
}

impl Event {
    /// The event's `CLOCK_BOOTTIME` timestamp.
    #[must_use]
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Closed(e) => e.header.ts_ns,
            Event::Transition(e) => e.header.ts_ns,
            Event::Reset(e) => e.header.ts_ns,
            Event::SynackRetransmit(e) => e.header.ts_ns,
            Event::Counters(c) => c.ts_ns,
            Event::Exec(e) => e.header.ts_ns,
            Event::Exit(e) => e.header.ts_ns,
            Event::Tracked(t) => t.ts_ns,
            Event::Fact(f) => match &**f {
                Fact::Process(p) => p.ts_ns,
                Fact::Sockets(s) => s.ts_ns,
                Fact::TimeWait(c) => c.ts_ns,
                Fact::Listeners(l) => l.ts_ns,
                Fact::Cgroup { .. } | Fact::TlsLibraries(_) => 0,
            },
            Event::TlsHello(e) => e.header.ts_ns,
            Event::TlsHandshake(e) => e.header.ts_ns,
            Event::TlsAlpn(e) => e.header.ts_ns,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event truncated: {got} bytes, need at least {need}")]
    Truncated { got: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    #[error("a recorded table of {0} bytes is not a whole number of socket states")]
    BadTable(usize),
    #[error("a recorded fact is not valid JSON: {0}")]
    BadFact(String),
    #[error("event kind {kind} declares {declared} bytes, its layout has {expected}")]
    BadLength {
        kind: u16,
        declared: u16,
        expected: usize,
    },
}

/// Copies a `T` out of `bytes`.
///
/// Only for the `#[repr(C)]` integer-only types of `observer_common`: every bit pattern is a
/// valid value, so any bytes of the right length decode.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Truncated {
            got: bytes.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: length checked above; T is plain integers (see above); unaligned read.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn exact<T: Copy>(header: &EventHeader, bytes: &[u8]) -> Result<T, DecodeError> {
    if usize::from(header.len) != size_of::<T>() {
        return Err(DecodeError::BadLength {
            kind: header.kind,
            declared: header.len,
            expected: size_of::<T>(),
        });
    }
    read(bytes)
}

/// An exec event; recordings made before ABI 7 carry it without the resolved path.
fn exec(header: &EventHeader, bytes: &[u8]) -> Result<ProcessExec, DecodeError> {
    if usize::from(header.len) != ProcessExec::ABI6_SIZE {
        return exact(header, bytes);
    }
    let mut full = [0u8; size_of::<ProcessExec>()];
    let old = bytes
        .get(..ProcessExec::ABI6_SIZE)
        .ok_or(DecodeError::Truncated {
            got: bytes.len(),
            need: ProcessExec::ABI6_SIZE,
        })?;
    full[..old.len()].copy_from_slice(old);
    read(&full)
}

/// Decodes one event.
///
/// # Errors
/// Truncated input, an unknown kind, or a length that does not match the kind's layout.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    match header.kind {
        kind::CONN_CLOSED => exact(&header, bytes).map(Event::Closed),
        kind::TRANSITION => exact(&header, bytes).map(Event::Transition),
        kind::RESET => exact(&header, bytes).map(Event::Reset),
        kind::SYNACK_RETRANSMIT => exact(&header, bytes).map(Event::SynackRetransmit),
        kind::PROCESS_EXEC => exec(&header, bytes).map(Event::Exec),
        kind::PROCESS_EXIT => exact(&header, bytes).map(Event::Exit),
        kind::TLS_HELLO => exact(&header, bytes).map(Event::TlsHello),
        kind::TLS_HANDSHAKE => exact(&header, bytes).map(Event::TlsHandshake),
        kind::TLS_ALPN => exact(&header, bytes).map(Event::TlsAlpn),
        KIND_COUNTERS => {
            let frame: CountersFrame = exact(&header, bytes)?;
            Ok(Event::Counters(Counters {
                ts_ns: header.ts_ns,
                values: frame.values,
            }))
        }
        KIND_TRACKED => {
            let body = &bytes[size_of::<EventHeader>()..];
            if !body.len().is_multiple_of(size_of::<ConnState>()) {
                return Err(DecodeError::BadTable(body.len()));
            }
            let states = body
                .chunks_exact(size_of::<ConnState>())
                .map(read::<ConnState>)
                .collect::<Result<_, _>>()?;
            Ok(Event::Tracked(Tracked {
                ts_ns: header.ts_ns,
                states,
            }))
        }
        KIND_FACT => serde_json::from_slice(&bytes[size_of::<EventHeader>()..])
            .map(|fact| Event::Fact(Box::new(fact)))
            .map_err(|e| DecodeError::BadFact(e.to_string())),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The header of a variable-length userspace frame: its length is the recording frame's.
fn frame_header(kind: u16, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        len: 0,
        _pad: 0,
        ts_ns,
        pid_tgid: 0,
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CountersFrame {
    header: EventHeader,
    values: [u64; counter::COUNT as usize],
}

/// Appends the bytes of an event to `out`, as the kernel (or, for counters, userspace) lays
/// it out.
pub fn encode_into(event: &Event, out: &mut Vec<u8>) {
    fn bytes<T: Copy>(value: &T, out: &mut Vec<u8>) {
        // SAFETY: T is a #[repr(C)] integer-only type with explicit padding, so all bytes are
        // initialised.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        });
    }
    match event {
        Event::Closed(e) => bytes(e, out),
        Event::Transition(e) => bytes(e, out),
        Event::Reset(e) => bytes(e, out),
        Event::SynackRetransmit(e) => bytes(e, out),
        Event::Exec(e) => bytes(e, out),
        Event::Exit(e) => bytes(e, out),
        Event::Tracked(t) => {
            bytes(&frame_header(KIND_TRACKED, t.ts_ns), out);
            for st in &t.states {
                bytes(st, out);
            }
        }
        Event::Fact(fact) => {
            bytes(&frame_header(KIND_FACT, event.ts_ns()), out);
            // Serialising these plain types cannot fail.
            let _ = serde_json::to_writer(&mut *out, &**fact);
        }
        Event::TlsHello(e) => bytes(e, out),
        Event::TlsHandshake(e) => bytes(e, out),
        Event::TlsAlpn(e) => bytes(e, out),
        Event::Counters(c) => bytes(
            &CountersFrame {
                header: EventHeader {
                    kind: KIND_COUNTERS,
                    len: u16::try_from(size_of::<CountersFrame>()).unwrap_or(u16::MAX),
                    _pad: 0,
                    ts_ns: c.ts_ns,
                    pid_tgid: 0,
                },
                values: c.values,
            },
            out,
        ),
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{ConnState, Endpoints};

    use super::*;

    fn encode(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(event, &mut out);
        out
    }

    fn reset() -> Reset {
        Reset {
            header: EventHeader {
                kind: kind::RESET,
                len: u16::try_from(size_of::<Reset>()).expect("fits"),
                _pad: 0,
                ts_ns: 42,
                pid_tgid: 7 << 32 | 8,
            },
            sk: 0xffff_8881_0000_1000,
            tuple: Endpoints {
                local_port: 80,
                remote_port: 5555,
                family: 2,
                ..Endpoints::default()
            },
            reason: 11,
            state: 7,
            flags: 3,
            _pad: 0,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let closed = ConnClosed {
            header: EventHeader {
                kind: kind::CONN_CLOSED,
                len: u16::try_from(size_of::<ConnClosed>()).expect("fits"),
                _pad: 0,
                ts_ns: 9,
                pid_tgid: 1,
            },
            sk: 1,
            state: ConnState::zeroed(),
            close: observer_common::CloseInfo::default(),
        };
        let counters = Counters {
            ts_ns: 5,
            values: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        for event in [
            Event::Reset(reset()),
            Event::Closed(closed),
            Event::Counters(counters),
        ] {
            assert_eq!(decode(&encode(&event)), Ok(event));
        }
    }

    #[test]
    fn exec_records_of_abi_6_decode_without_a_walked_path() {
        let mut bytes = vec![0u8; ProcessExec::ABI6_SIZE];
        let header = EventHeader {
            kind: kind::PROCESS_EXEC,
            len: u16::try_from(ProcessExec::ABI6_SIZE).expect("fits"),
            _pad: 0,
            ts_ns: 3,
            pid_tgid: 5 << 32 | 5,
        };
        // SAFETY: the buffer holds a header; unaligned write.
        unsafe {
            bytes
                .as_mut_ptr()
                .cast::<EventHeader>()
                .write_unaligned(header);
        }
        bytes[24..33].copy_from_slice(b"/bin/curl");
        let Ok(Event::Exec(e)) = decode(&bytes) else {
            panic!("not an exec: {:?}", decode(&bytes));
        };
        assert_eq!(&e.filename[..10], b"/bin/curl\0");
        assert_eq!(e.exe_len, 0);
        // A full ABI 7 record round-trips, and any other length is refused.
        let mut full = e;
        full.header.len = u16::try_from(size_of::<ProcessExec>()).expect("fits");
        full.exe[..4].copy_from_slice(b"sh\0\0");
        full.exe_len = 3;
        assert_eq!(decode(&encode(&Event::Exec(full))), Ok(Event::Exec(full)));
        full.header.len = 300;
        assert_eq!(
            decode(&encode(&Event::Exec(full))),
            Err(DecodeError::BadLength {
                kind: kind::PROCESS_EXEC,
                declared: 300,
                expected: size_of::<ProcessExec>(),
            })
        );
    }

    #[test]
    fn decodes_from_unaligned_bytes() {
        let mut buf = vec![0u8];
        buf.extend(encode(&Event::Reset(reset())));
        assert_eq!(decode(&buf[1..]), Ok(Event::Reset(reset())));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let bytes = encode(&Event::Reset(reset()));
        assert_eq!(
            decode(&bytes[..10]),
            Err(DecodeError::Truncated { got: 10, need: 24 })
        );
        assert_eq!(
            decode(&bytes[..79]),
            Err(DecodeError::Truncated { got: 79, need: 80 })
        );
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated { got: 0, need: 24 })
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        let mut bytes = encode(&Event::Reset(reset()));
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
        let mut bytes = encode(&Event::Reset(reset()));
        bytes[2] = 200;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::BadLength {
                kind: kind::RESET,
                declared: 200,
                expected: 80
            })
        );
    }
}
