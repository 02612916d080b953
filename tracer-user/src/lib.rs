//! The `tracer` agent: loads the kernel programs, assembles spans from what they see, exports them.

pub mod clock;
pub mod events;
pub mod model;
