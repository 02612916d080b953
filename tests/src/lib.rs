//! End-to-end test support: an OTLP receiver, fixture services and agent control.
pub mod backends;
pub mod certs;
pub mod goctx;
pub mod grpc_echo;
pub mod harness;
pub mod http1;
pub mod jaeger;
pub mod nginx;
pub mod receiver;
pub mod scenarios;
pub mod traces;
