//! Types that cross the kernel/user boundary. This crate is the only place they are defined.
//!
//! Every record written to the ring buffer starts with an [`EventHeader`] whose `kind` says which
//! payload follows. Layouts are `#[repr(C)]` with explicit padding and sizes checked at compile
//! time, so the kernel and userspace can never disagree silently. Userspace decodes records with
//! fallible functions (`tracer-user/src/capture/decode.rs`), never by casting a pointer.
//!
//! * [`event`]: the record envelope, roles and the flag bits shared by every record;
//! * [`socket`]: socket transfers, connection set-up and close, per-connection kernel state;
//! * [`classify`]: the one protocol classifier, used by the kernel and by userspace;
//! * [`trace`]: trace contexts and the TCP option that carries them;
//! * [`process`]: process lifecycle and the kernel layouts read at start-up;
//! * [`go`]: records and per-process layouts of the Go probes;
//! * [`tables`], [`names`]: the kernel's tables, counters, maps, programs and globals by name.
#![cfg_attr(not(test), no_std)]

pub mod classify;
pub mod event;
pub mod go;
pub mod names;
pub mod process;
pub mod socket;
pub mod tables;
pub mod trace;

pub use classify::{
    H2_PREFACE, MessageKind, Proto, Verdict, classify, classify_client, classify_db, classify_first8, kafka_request,
};
pub use event::{EventHeader, EventKind, Role, flags};
pub use go::*;
pub use process::*;
pub use socket::*;
pub use trace::*;

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<EventHeader>() == 24);
    assert!(size_of::<ConnTuple>() == 40);
    assert!(size_of::<DataMeta>() == 8 + 8 + 40 + 4 * 4 + 8 + 40);
    assert!(size_of::<DataEvent>() == 24 + size_of::<DataMeta>() + MAX_PAYLOAD + TAIL_PAYLOAD);
    assert!(size_of::<TraceCtx>() == 32);
    assert!(size_of::<TupleKey>() == 36);
    assert!(size_of::<CloseEvent>() == 32);
    assert!(size_of::<TlsHandshakeEvent>() == 40);
    assert!(size_of::<ConnEvent>() == 48);
    assert!(size_of::<HandshakeEvent>() == 80);
    assert!(size_of::<ProcEvent>() == 48);
    assert!(size_of::<SockOffsets>() == 32);
    assert!(size_of::<FdOffsets>() == 40);
    assert!(size_of::<TaskOffsets>() == 8);
    assert!(size_of::<ConnState>() == 8);
    assert!(size_of::<GoProc>() == 24);
    assert!(size_of::<NetRpcProc>() == 16);
    assert!(size_of::<GoTlsProc>() == 8);
    assert!(size_of::<GoCtxProc>() == 112);
    assert!(size_of::<GrpcEvent>() == 24 + 8 + 32 + 40 + 16 + GRPC_METHOD_MAX);
    assert!(size_of::<GrpcProc>() == 13 * 8 + 8);
    assert!(size_of::<GoRouteEvent>() == 24 + 8 + 8 + ROUTE_LEN);
    assert!(size_of::<GoRpcEvent>() == 24 + 8 + 16 + 8 + 8 + 8 + 40 + 4 + RPC_METHOD_LEN + 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceCtx {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetRpcProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoTlsProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GrpcProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoCtxProc {}
}
