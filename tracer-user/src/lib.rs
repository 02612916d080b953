//! The `tracer` agent: loads the kernel programs, assembles spans from what they see, exports them.

pub mod clock;
pub mod events;
pub mod export;
pub mod model;
pub mod cli;
pub mod discovery;
pub mod doctor;
pub mod kernel;
pub mod loader;
pub mod process;
pub mod http;
pub mod assembler;
pub mod correlate;
pub mod run;
pub mod caps;
pub mod gobin;
pub mod goprobes;
pub mod grpc;
