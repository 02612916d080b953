//! The kernel side as userspace sees it: loading and attaching the programs (`loader`), the
//! running kernel's layouts (`btf`), the capabilities the agent needs (`caps`), what the kernel
//! allows (`doctor`), the census of the kernel's tables (`census`) and the kernel programs' own
//! log (`klog`).

pub mod btf;
pub mod caps;
pub mod census;
pub mod doctor;
pub mod klog;
pub mod loader;
