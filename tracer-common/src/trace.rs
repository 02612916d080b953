//! Trace contexts the kernel keeps and carries, and the TCP option that carries them.

/// A trace context kept in kernel maps: per thread (the server span it is handling), per
/// outgoing connection (what the TCP option carries) and per incoming connection (what it carried).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable))]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// CLOCK_MONOTONIC ns when the context was set (stale contexts are ignored).
    pub ts_ns: u64,
}

/// TCP option carrying the trace context: kind 254 (RFC 6994 experimental) with this ExID, then
/// the 16-byte trace id and the 8-byte span id of the client span. 28 bytes: with timestamps
/// (12 bytes) it fits the 40 bytes of TCP option space.
pub const TCP_OPT_KIND: u8 = 254;
pub const TCP_OPT_EXID: u16 = 0x7472; // "tr"
pub const TCP_OPT_LEN: u8 = 28;

/// How far the kernel carries trace context (the global `PROPAGATION`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Propagation {
    /// In-process links and incoming `traceparent` headers only.
    Off = 0,
    /// Also pairs client and server sides on this host (in userspace; nothing on the wire).
    #[default]
    SameHost = 1,
    /// Also carries context to other hosts in a TCP option.
    On = 2,
}
