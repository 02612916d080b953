//! Stage 1 of the data path: the kernel's ring-buffer records, decoded into owned events.
//!
//! The kernel writes `#[repr(C)]` structs from `tracer-common`; [`decode`] reads them with
//! length checks (zerocopy's `FromBytes`, never a pointer cast), validates every enum value and
//! every length the kernel claims, and hands payload bytes on as [`bytes::Bytes`] slices of the
//! record, so they are copied once (out of the ring). [`encode`] lays events out the way the
//! kernel does, for golden files, fuzz targets and fixtures.

pub mod decode;
pub mod encode;
pub mod event;
