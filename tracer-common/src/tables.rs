//! The kernel's tables by eviction policy, and the per-CPU counters. Every table is bounded.
//!
//! * LRU tables (per connection, per goroutine, per in-flight context) evict their least
//!   recently used entry when full. The kernel counts the keys it adds and removes; userspace
//!   counts the entries present, and `added - removed - present` were evicted.
//! * Fixed tables (per process, per in-flight syscall) refuse a new entry when full and count
//!   the refusal; their entries end with the syscall, the thread or the process.

use crate::names::maps;

/// LRU tables; the value indexes their counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LruTable {
    Conns = 0,
    ThreadCtx,
    ConnTuple,
    OutCtx,
    InCtx,
    GoParent,
    GoSrvCtx,
    GoReqCtx,
    GoWriterCtx,
    GrpcCall,
    GrpcStreamCall,
    GrpcHdr,
    GrpcTuple,
    GrpcPeer,
    GrpcSrv,
    RpcSending,
    RpcClient,
    RpcServer,
    RpcOut,
    SslFd,
    GoTlsReads,
    DnsQuery,
    SslHandshake,
    GoTlsHandshakes,
    GoCtxOwner,
}

impl LruTable {
    pub const ALL: [LruTable; 25] = [
        Self::Conns,
        Self::ThreadCtx,
        Self::ConnTuple,
        Self::OutCtx,
        Self::InCtx,
        Self::GoParent,
        Self::GoSrvCtx,
        Self::GoReqCtx,
        Self::GoWriterCtx,
        Self::GrpcCall,
        Self::GrpcStreamCall,
        Self::GrpcHdr,
        Self::GrpcTuple,
        Self::GrpcPeer,
        Self::GrpcSrv,
        Self::RpcSending,
        Self::RpcClient,
        Self::RpcServer,
        Self::RpcOut,
        Self::SslFd,
        Self::GoTlsReads,
        Self::DnsQuery,
        Self::SslHandshake,
        Self::GoTlsHandshakes,
        Self::GoCtxOwner,
    ];

    /// The map's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Conns => maps::CONNS,
            Self::ThreadCtx => maps::THREAD_CTX,
            Self::ConnTuple => maps::CONN_TUPLE,
            Self::OutCtx => maps::OUT_CTX,
            Self::InCtx => maps::IN_CTX,
            Self::GoParent => maps::GO_PARENT,
            Self::GoSrvCtx => maps::GO_SRV_CTX,
            Self::GoReqCtx => maps::GO_REQ_CTX,
            Self::GoWriterCtx => maps::GO_WRITER_CTX,
            Self::GrpcCall => maps::GRPC_CALL,
            Self::GrpcStreamCall => maps::GRPC_STREAM_CALL,
            Self::GrpcHdr => maps::GRPC_HDR,
            Self::GrpcTuple => maps::GRPC_TUPLE,
            Self::GrpcPeer => maps::GRPC_PEER,
            Self::GrpcSrv => maps::GRPC_SRV,
            Self::RpcSending => maps::RPC_SENDING,
            Self::RpcClient => maps::RPC_CLIENT,
            Self::RpcServer => maps::RPC_SERVER,
            Self::RpcOut => maps::RPC_OUT,
            Self::SslFd => maps::SSL_FD,
            Self::GoTlsReads => maps::GO_TLS_READS,
            Self::DnsQuery => maps::DNS_QUERY,
            Self::SslHandshake => maps::SSL_HANDSHAKE,
            Self::GoTlsHandshakes => maps::GO_TLS_HANDSHAKES,
            Self::GoCtxOwner => maps::GO_CTX_OWNER,
        }
    }
}

/// Fixed-size tables; the value indexes their counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixedTable {
    Traced = 0,
    Excluded,
    Args,
    ConnectFd,
    NoThreadLink,
    IovState,
    GoProcs,
    GoNewproc,
    SslCall,
}

impl FixedTable {
    pub const ALL: [FixedTable; 9] = [
        Self::Traced,
        Self::Excluded,
        Self::Args,
        Self::ConnectFd,
        Self::NoThreadLink,
        Self::IovState,
        Self::GoProcs,
        Self::GoNewproc,
        Self::SslCall,
    ];

    /// The map's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Traced => maps::TRACED,
            Self::Excluded => maps::EXCLUDED,
            Self::Args => maps::ARGS,
            Self::ConnectFd => maps::CONNECT_FD,
            Self::NoThreadLink => maps::NO_THREAD_LINK,
            Self::IovState => maps::IOV_STATE,
            Self::GoProcs => maps::GO_PROCS,
            Self::GoNewproc => maps::GO_NEWPROC,
            Self::SslCall => maps::SSL_CALL,
        }
    }
}

/// Indices of the per-CPU counters map (`COUNTER`).
pub mod counters {
    use super::{FixedTable, LruTable};

    /// Records written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Records lost: the ring buffer was full.
    pub const LOST: u32 = 1;
    /// Transfers of connections that carry no traced protocol.
    pub const NOT_TRACED: u32 = 2;
    /// Keys added to each LRU table.
    pub const fn lru_added(t: LruTable) -> u32 {
        LRU_ADDED + t as u32
    }
    /// Keys removed from each LRU table.
    pub const fn lru_removed(t: LruTable) -> u32 {
        LRU_REMOVED + t as u32
    }
    /// Entries refused by each full fixed-size table.
    pub const fn table_full(t: FixedTable) -> u32 {
        TABLE_FULL + t as u32
    }
    pub const LRU_ADDED: u32 = 3;
    pub const LRU_REMOVED: u32 = LRU_ADDED + LruTable::ALL.len() as u32;
    pub const TABLE_FULL: u32 = LRU_REMOVED + LruTable::ALL.len() as u32;
    /// gRPC HEADERS frames of a new stream written with no traced call known for them (the
    /// stream cannot be paired with its server).
    pub const GRPC_NO_CALL: u32 = TABLE_FULL + FixedTable::ALL.len() as u32;
    /// gRPC streams whose connection addresses or stream id could not be read.
    pub const GRPC_NO_ADDR: u32 = GRPC_NO_CALL + 1;
    /// gRPC server calls without a traced client on this host for their stream.
    pub const GRPC_UNPAIRED: u32 = GRPC_NO_CALL + 2;
    /// TLS plaintext dropped because no socket was seen under the library call (a memory BIO
    /// or BIO pair, or a socket that is not TCP).
    pub const TLS_NO_FD: u32 = GRPC_NO_CALL + 3;
    /// Go calls whose parent their `context.Context` gave (`tracer-ebpf/src/go/context.rs`).
    pub const GO_CTX_PARENT: u32 = GRPC_NO_CALL + 4;
    /// Go calls whose context belongs to a request that has ended: they get no parent.
    pub const GO_CTX_ENDED: u32 = GRPC_NO_CALL + 5;
    /// Entries of the counters map.
    pub const COUNT: u32 = GO_CTX_ENDED + 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_values_index_their_lists() {
        for (i, t) in LruTable::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
        for (i, t) in FixedTable::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }

    #[test]
    fn every_table_is_a_map_of_the_object() {
        for t in LruTable::ALL {
            assert!(maps::ALL.contains(&t.name()), "{t:?}");
        }
        for t in FixedTable::ALL {
            assert!(maps::ALL.contains(&t.name()), "{t:?}");
        }
    }
}
