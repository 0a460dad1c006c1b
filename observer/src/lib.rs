//! observer: an eBPF TCP connection observer.
//!
//! Data flows one way: a source (`probe::Capture`: kernel hooks and the ring buffer, the only
//! module that uses aya; or a recording) → the pipeline (`decode` bytes → events, `track`
//! lifecycles into records, `detect` anomalies) → sinks (`sink`: NDJSON outputs, each on its
//! own thread; `top`'s read model). `app` wires them, through `app::source`, the same way for
//! `run`, `replay` and `top`; `check` reports what this kernel supports.

pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod decode;
pub mod detect;
pub mod facts;
pub mod filter;
pub mod gather;
pub mod kernel;
pub mod probe;
pub mod procs;
pub mod recording;
pub mod sink;
pub mod tls;
pub mod top;
pub mod track;
