//! `observer top`: a live terminal view of the open connections.
//!
//! `model` is the read model (rows from the tracker's snapshot, counts and rates, and the
//! detectors' alerts folded by `alerts`), filled at each refresh by `feed`; `select` filters
//! and sorts it, `input` turns keys into UI state, `view` draws a frame (`anomalies` draws
//! that view), `term` owns the real terminal, and `display` draws on it from a thread of
//! its own, so that the terminal never holds up capture. The capture loop feeding the model
//! lives in `app::top`.

pub mod alerts;
mod anomalies;
mod detail;
pub mod display;
pub mod feed;
pub mod input;
pub mod listeners;
pub mod model;
pub mod select;
mod term;
pub mod view;

pub use term::Screen;

#[cfg(test)]
mod filter_tests;
#[cfg(test)]
mod tests;
