//! End-to-end test support: an OTLP receiver, fixture services and agent control.
pub mod harness;
pub mod receiver;
pub mod scenarios;
pub mod traces;
