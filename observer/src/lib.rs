//! observer: an eBPF TCP connection observer.
//!
//! Data flows one way: `probe` (kernel hooks, ring buffer; the only module that uses aya) →
//! `decode` (bytes → events) → `track` (lifecycle, records) → `sink` (NDJSON). `app` wires them
//! for a live run and for `replay`; `check` reports what this kernel supports.

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
