//! The real `kvstore` binary as an operator runs it, one node (or a few) at a time:
//! crash safety, shutdown, configuration errors and the command line (`process`), what
//! it logs (`logs`), a walk of many keys in bounded memory (`listing`), power cuts on a
//! disk that forgets unsynced writes (`powerloss`), a real Prometheus scraping a
//! cluster (`prometheus`), and one trace across in-process nodes (`traces`).
//!
//! `traces` installs the process's global tracing subscriber, so it is the only test
//! in this binary that runs nodes in-process; every other one runs the binary.

#[path = "../support/mod.rs"]
mod support;

mod listing;
mod logs;
mod powerloss;
mod process;
mod prometheus;
mod traces;
