//! The kernel side as userspace sees it: loading and attaching the programs (`loader`), the
//! running kernel's layouts (`btf`), the capabilities the agent needs (`caps`), what the kernel
//! allows (`doctor`) and the census of the kernel's tables (`census`).

pub mod btf;
pub mod caps;
pub mod census;
pub mod doctor;
pub mod loader;
