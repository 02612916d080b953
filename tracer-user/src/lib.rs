//! The `tracer` agent: loads the kernel programs, turns what they see into spans, exports them.
//!
//! The data path, in order (each stage uses only the stages before it; `agent` wires them):
//!
//! 1. [`capture`]: ring-buffer records decoded into events; [`dns`]: the DNS answers among them
//!    kept as each process's recent lookups;
//! 2. [`streams`]: socket events keyed by connection, with the connection's lifecycle;
//! 3. [`protocols`]: one parser per protocol behind one trait; exchanges out;
//! 4. [`spans`]: exchanges named and attributed as spans, and counted as metric points;
//! 5. [`correlate`]: spans linked into traces (threads, goroutines, same-host pairs);
//! 6. [`export`] (OTLP or stdout) and [`metrics`] (Prometheus, OTLP).
//!
//! Beside it: [`agent`] (the run loop and the one wiring of the path, `agent::pipeline`),
//! [`kernel`] (loading the programs, what the kernel offers), [`golang`] (Go binaries and
//! their uprobes), [`discovery`] and [`process`] (which processes are traced, and who they
//! are), [`config`] and [`cli`], [`watch`] (the terminal view). [`model`] and [`clock`] are the
//! shared vocabulary.

pub mod clock;
pub mod model;

pub mod capture;
pub mod correlate;
pub mod dns;
pub mod export;
pub mod metrics;
pub mod protocols;
pub mod spans;
pub mod streams;

pub mod agent;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod golang;
pub mod kernel;
pub mod libssl;
pub mod process;
pub mod watch;
