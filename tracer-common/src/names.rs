//! Names of the kernel programs, maps and globals, as the built object carries them. The kernel
//! crate names its items after these (a test in tracer-user checks the built object holds
//! exactly these names); the loader looks items up only through these constants.

/// Ring buffers, hash tables and arrays.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTER: &str = "COUNTER";
    pub const TRACED: &str = "TRACED";
    pub const EXCLUDED: &str = "EXCLUDED";
    pub const ARGS: &str = "ARGS";
    pub const CONNECT_FD: &str = "CONNECT_FD";
    pub const CONNECTING: &str = "CONNECTING";
    pub const CONNS: &str = "CONNS";
    pub const THREAD_CTX: &str = "THREAD_CTX";
    pub const NO_THREAD_LINK: &str = "NO_THREAD_LINK";
    pub const CONN_TUPLE: &str = "CONN_TUPLE";
    pub const OUT_CTX: &str = "OUT_CTX";
    pub const IN_CTX: &str = "IN_CTX";
    pub const IOV_STATE: &str = "IOV_STATE";
    pub const IOV_SCRATCH: &str = "IOV_SCRATCH";
    pub const OPAQUE: &str = "OPAQUE";
    /// The kernel log's ring (aya-log) and its per-CPU rate limit.
    pub const AYA_LOGS: &str = "AYA_LOGS";
    pub const LOG_LAST: &str = "LOG_LAST";
    pub const PROGS: &str = "PROGS";
    pub const GO_PROCS: &str = "GO_PROCS";
    pub const GO_NEWPROC: &str = "GO_NEWPROC";
    pub const GO_PARENT: &str = "GO_PARENT";
    pub const GO_SRV_CTX: &str = "GO_SRV_CTX";
    pub const GO_REQ_CTX: &str = "GO_REQ_CTX";
    pub const GO_WRITER_CTX: &str = "GO_WRITER_CTX";
    pub const RPC_PROCS: &str = "RPC_PROCS";
    pub const RPC_SENDING: &str = "RPC_SENDING";
    pub const RPC_CLIENT: &str = "RPC_CLIENT";
    pub const RPC_SERVER: &str = "RPC_SERVER";
    pub const RPC_OUT: &str = "RPC_OUT";
    pub const GRPC_PROCS: &str = "GRPC_PROCS";
    pub const GRPC_CALL: &str = "GRPC_CALL";
    pub const GRPC_STREAM_CALL: &str = "GRPC_STREAM_CALL";
    pub const GRPC_HDR: &str = "GRPC_HDR";
    pub const GRPC_TUPLE: &str = "GRPC_TUPLE";
    pub const GRPC_PEER: &str = "GRPC_PEER";
    pub const GRPC_SRV: &str = "GRPC_SRV";
    pub const SSL_CALL: &str = "SSL_CALL";
    pub const SSL_FD: &str = "SSL_FD";
    pub const SSL_PROGS: &str = "SSL_PROGS";
    pub const GO_TLS_PROCS: &str = "GO_TLS_PROCS";
    pub const GO_TLS_READS: &str = "GO_TLS_READS";
    pub const GO_TLS_PROGS: &str = "GO_TLS_PROGS";
    pub const GO_TLS_PROGS_MULTI: &str = "GO_TLS_PROGS_MULTI";
    pub const GO_TLS_HANDSHAKES: &str = "GO_TLS_HANDSHAKES";
    pub const DNS_QUERY: &str = "DNS_QUERY";
    pub const SSL_HANDSHAKE: &str = "SSL_HANDSHAKE";
    pub const GO_CTX_PROCS: &str = "GO_CTX_PROCS";
    pub const GO_CTX_OWNER: &str = "GO_CTX_OWNER";
    pub const GO_CTX_SCRATCH: &str = "GO_CTX_SCRATCH";

    /// Every map of the object.
    pub const ALL: &[&str] = &[
        EVENTS,
        COUNTER,
        TRACED,
        EXCLUDED,
        ARGS,
        CONNECT_FD,
        CONNECTING,
        CONNS,
        THREAD_CTX,
        NO_THREAD_LINK,
        CONN_TUPLE,
        OUT_CTX,
        IN_CTX,
        IOV_STATE,
        IOV_SCRATCH,
        OPAQUE,
        AYA_LOGS,
        LOG_LAST,
        PROGS,
        GO_PROCS,
        GO_NEWPROC,
        GO_PARENT,
        GO_SRV_CTX,
        GO_REQ_CTX,
        GO_WRITER_CTX,
        RPC_PROCS,
        RPC_SENDING,
        RPC_CLIENT,
        RPC_SERVER,
        RPC_OUT,
        GRPC_PROCS,
        GRPC_CALL,
        GRPC_STREAM_CALL,
        GRPC_HDR,
        GRPC_TUPLE,
        GRPC_PEER,
        GRPC_SRV,
        SSL_CALL,
        SSL_FD,
        SSL_PROGS,
        GO_TLS_PROCS,
        GO_TLS_READS,
        GO_TLS_PROGS,
        GO_TLS_PROGS_MULTI,
        GO_TLS_HANDSHAKES,
        DNS_QUERY,
        SSL_HANDSHAKE,
        GO_CTX_PROCS,
        GO_CTX_OWNER,
        GO_CTX_SCRATCH,
    ];
}

/// Globals the loader sets before loading.
pub mod globals {
    pub const AGENT_TGID: &str = "AGENT_TGID";
    pub const TRACE_ALL: &str = "TRACE_ALL";
    pub const PROPAGATION: &str = "PROPAGATION";
    pub const SOCK_OFF: &str = "SOCK_OFF";
    pub const GO_FSBASE_OFF: &str = "GO_FSBASE_OFF";
    pub const FD_OFF: &str = "FD_OFF";
    pub const TASK_OFF: &str = "TASK_OFF";
    /// The kernel programs' log level (aya-log's).
    pub const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

    pub const ALL: &[&str] =
        &[AGENT_TGID, TRACE_ALL, PROPAGATION, SOCK_OFF, GO_FSBASE_OFF, FD_OFF, TASK_OFF, AYA_LOG_LEVEL];
}

/// Slots of the `PROGS` program array: the programs reached only by tail calls.
pub mod tail {
    /// `emit_step`, from `sys_exit` (a data syscall's first chunk) and from itself (the next).
    pub const EMIT_STEP: u32 = 0;
    /// `sys_exit_conn`, from `sys_exit` (connect, accept, accept4).
    pub const EXIT_CONN: u32 = 1;
    /// Slots in all.
    pub const COUNT: u32 = 2;
}

/// Programs.
pub mod programs {
    // Socket data path (raw syscall tracepoints and the sock tracepoints).
    /// Raw `sys_enter`: data syscalls, connect/accept, close.
    pub const SYS_ENTER: &str = "sys_enter";
    /// Raw `sys_exit`: data syscalls; connect/accept through `sys_exit_conn`.
    pub const SYS_EXIT: &str = "sys_exit";
    pub const SOCK_LENGTH: &str = "sock_length";
    /// Raw `inet_sock_set_state`: a traced connect's TCP handshake (per connection, not per
    /// syscall).
    pub const SOCK_STATE: &str = "sock_state";
    /// Tail-called (slot `tail::EMIT_STEP` of `PROGS`), never attached.
    pub const EMIT_STEP: &str = "emit_step";
    /// Tail-called (slot `tail::EXIT_CONN` of `PROGS`), never attached.
    pub const SYS_EXIT_CONN: &str = "sys_exit_conn";
    // Process lifecycle.
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    // TCP-option propagation.
    pub const SOCKOPS: &str = "tracer_sockops";
    // Go runtime and net/http.
    pub const GO_NEWPROC1: &str = "go_newproc1";
    pub const GO_NEWPROC1_RET: &str = "go_newproc1_ret";
    pub const GO_HTTP_ROUNDTRIP: &str = "go_http_roundtrip";
    pub const GO_HTTP_REQUEST_WRITE: &str = "go_http_request_write";
    pub const GO_HTTP_ROUTE_RET: &str = "go_http_route_ret";
    pub const GO_HTTP_SERVE: &str = "go_http_serve";
    // Go net/rpc.
    pub const GO_RPC_CLIENT_SEND: &str = "go_rpc_client_send";
    pub const GO_RPC_CLIENT_WRITE: &str = "go_rpc_client_write";
    pub const GO_RPC_CLIENT_DONE: &str = "go_rpc_client_done";
    pub const GO_RPC_SERVER_CALL: &str = "go_rpc_server_call";
    pub const GO_RPC_SERVER_RESPOND: &str = "go_rpc_server_respond";
    // grpc-go.
    pub const GRPC_INVOKE: &str = "grpc_invoke";
    pub const GRPC_INVOKE_RET: &str = "grpc_invoke_ret";
    pub const GRPC_NEW_STREAM: &str = "grpc_new_stream";
    pub const GRPC_NEW_STREAM_RET: &str = "grpc_new_stream_ret";
    pub const GRPC_STREAM_FINISH: &str = "grpc_stream_finish";
    pub const GRPC_EXECUTE_AND_PUT: &str = "grpc_execute_and_put";
    pub const GRPC_ORIGINATE_STREAM: &str = "grpc_originate_stream";
    pub const GRPC_HANDLE_STREAM: &str = "grpc_handle_stream";
    pub const GRPC_WRITE_STATUS: &str = "grpc_write_status";
    pub const GRPC_HANDLE_STREAM_RET: &str = "grpc_handle_stream_ret";
    // Go crypto/tls: TLS plaintext into the socket data path.
    pub const GO_TLS_WRITE: &str = "go_tls_write";
    pub const GO_TLS_READ: &str = "go_tls_read";
    pub const GO_TLS_READ_RET: &str = "go_tls_read_ret";
    /// Tail-called by the two above (slot 0 of `GO_TLS_PROGS`), never attached.
    pub const GO_TLS_EMIT_STEP: &str = "go_tls_emit_step";
    pub const GO_TLS_HANDSHAKE: &str = "go_tls_handshake";
    pub const GO_TLS_HANDSHAKE_RET: &str = "go_tls_handshake_ret";
    // The same Go programs as multi-uprobes (`uprobe.multi`, Linux 6.6 and later).
    pub const GO_NEWPROC1_MULTI: &str = "go_newproc1_multi";
    pub const GO_NEWPROC1_RET_MULTI: &str = "go_newproc1_ret_multi";
    pub const GO_HTTP_ROUNDTRIP_MULTI: &str = "go_http_roundtrip_multi";
    pub const GO_HTTP_REQUEST_WRITE_MULTI: &str = "go_http_request_write_multi";
    pub const GO_HTTP_ROUTE_RET_MULTI: &str = "go_http_route_ret_multi";
    pub const GO_HTTP_SERVE_MULTI: &str = "go_http_serve_multi";
    pub const GO_RPC_CLIENT_SEND_MULTI: &str = "go_rpc_client_send_multi";
    pub const GO_RPC_CLIENT_WRITE_MULTI: &str = "go_rpc_client_write_multi";
    pub const GO_RPC_CLIENT_DONE_MULTI: &str = "go_rpc_client_done_multi";
    pub const GO_RPC_SERVER_CALL_MULTI: &str = "go_rpc_server_call_multi";
    pub const GO_RPC_SERVER_RESPOND_MULTI: &str = "go_rpc_server_respond_multi";
    pub const GRPC_INVOKE_MULTI: &str = "grpc_invoke_multi";
    pub const GRPC_INVOKE_RET_MULTI: &str = "grpc_invoke_ret_multi";
    pub const GRPC_NEW_STREAM_MULTI: &str = "grpc_new_stream_multi";
    pub const GRPC_NEW_STREAM_RET_MULTI: &str = "grpc_new_stream_ret_multi";
    pub const GRPC_STREAM_FINISH_MULTI: &str = "grpc_stream_finish_multi";
    pub const GRPC_EXECUTE_AND_PUT_MULTI: &str = "grpc_execute_and_put_multi";
    pub const GRPC_ORIGINATE_STREAM_MULTI: &str = "grpc_originate_stream_multi";
    pub const GRPC_HANDLE_STREAM_MULTI: &str = "grpc_handle_stream_multi";
    pub const GRPC_WRITE_STATUS_MULTI: &str = "grpc_write_status_multi";
    pub const GRPC_HANDLE_STREAM_RET_MULTI: &str = "grpc_handle_stream_ret_multi";
    pub const GO_TLS_WRITE_MULTI: &str = "go_tls_write_multi";
    pub const GO_TLS_READ_MULTI: &str = "go_tls_read_multi";
    pub const GO_TLS_READ_RET_MULTI: &str = "go_tls_read_ret_multi";
    /// Tail-called by the multi twins (slot 0 of `GO_TLS_PROGS_MULTI`), never attached.
    pub const GO_TLS_EMIT_STEP_MULTI: &str = "go_tls_emit_step_multi";
    pub const GO_TLS_HANDSHAKE_MULTI: &str = "go_tls_handshake_multi";
    pub const GO_TLS_HANDSHAKE_RET_MULTI: &str = "go_tls_handshake_ret_multi";
    /// Each Go uprobe program and its multi-uprobe twin (same body): the agent loads one set.
    pub const GO_MULTI: &[(&str, &str)] = &[
        (GO_NEWPROC1, GO_NEWPROC1_MULTI),
        (GO_NEWPROC1_RET, GO_NEWPROC1_RET_MULTI),
        (GO_HTTP_ROUNDTRIP, GO_HTTP_ROUNDTRIP_MULTI),
        (GO_HTTP_REQUEST_WRITE, GO_HTTP_REQUEST_WRITE_MULTI),
        (GO_HTTP_ROUTE_RET, GO_HTTP_ROUTE_RET_MULTI),
        (GO_HTTP_SERVE, GO_HTTP_SERVE_MULTI),
        (GO_RPC_CLIENT_SEND, GO_RPC_CLIENT_SEND_MULTI),
        (GO_RPC_CLIENT_WRITE, GO_RPC_CLIENT_WRITE_MULTI),
        (GO_RPC_CLIENT_DONE, GO_RPC_CLIENT_DONE_MULTI),
        (GO_RPC_SERVER_CALL, GO_RPC_SERVER_CALL_MULTI),
        (GO_RPC_SERVER_RESPOND, GO_RPC_SERVER_RESPOND_MULTI),
        (GRPC_INVOKE, GRPC_INVOKE_MULTI),
        (GRPC_INVOKE_RET, GRPC_INVOKE_RET_MULTI),
        (GRPC_NEW_STREAM, GRPC_NEW_STREAM_MULTI),
        (GRPC_NEW_STREAM_RET, GRPC_NEW_STREAM_RET_MULTI),
        (GRPC_STREAM_FINISH, GRPC_STREAM_FINISH_MULTI),
        (GRPC_EXECUTE_AND_PUT, GRPC_EXECUTE_AND_PUT_MULTI),
        (GRPC_ORIGINATE_STREAM, GRPC_ORIGINATE_STREAM_MULTI),
        (GRPC_HANDLE_STREAM, GRPC_HANDLE_STREAM_MULTI),
        (GRPC_WRITE_STATUS, GRPC_WRITE_STATUS_MULTI),
        (GRPC_HANDLE_STREAM_RET, GRPC_HANDLE_STREAM_RET_MULTI),
        (GO_TLS_WRITE, GO_TLS_WRITE_MULTI),
        (GO_TLS_READ, GO_TLS_READ_MULTI),
        (GO_TLS_READ_RET, GO_TLS_READ_RET_MULTI),
        (GO_TLS_EMIT_STEP, GO_TLS_EMIT_STEP_MULTI),
        (GO_TLS_HANDSHAKE, GO_TLS_HANDSHAKE_MULTI),
        (GO_TLS_HANDSHAKE_RET, GO_TLS_HANDSHAKE_RET_MULTI),
    ];
    // OpenSSL (libssl.so.*): TLS plaintext into the socket data path.
    pub const SSL_WRITE: &str = "ssl_write";
    pub const SSL_READ: &str = "ssl_read";
    pub const SSL_WRITE_EX: &str = "ssl_write_ex";
    pub const SSL_READ_EX: &str = "ssl_read_ex";
    pub const SSL_RET: &str = "ssl_ret";
    pub const SSL_FREE: &str = "ssl_free";
    pub const SSL_DO_HANDSHAKE: &str = "ssl_do_handshake";
    pub const SSL_HANDSHAKE_RET: &str = "ssl_handshake_ret";
    /// Tail-called by `ssl_ret` (slot 0 of `SSL_PROGS`), never attached.
    pub const SSL_EMIT_STEP: &str = "ssl_emit_step";
    // `tracer doctor`: no-op programs of each attach type.
    pub const CAP_KPROBE: &str = "cap_kprobe";
    pub const CAP_FENTRY: &str = "cap_fentry";
    pub const CAP_UPROBE: &str = "cap_uprobe";
    pub const CAP_TP_BTF: &str = "cap_tp_btf";
    pub const CAP_SOCK_OPS: &str = "cap_sock_ops";
    pub const CAP_WRITE_USER: &str = "cap_write_user";

    /// Every program of the object.
    pub const ALL: &[&str] = &[
        SYS_ENTER,
        SYS_EXIT,
        SOCK_LENGTH,
        SOCK_STATE,
        EMIT_STEP,
        SYS_EXIT_CONN,
        SCHED_PROCESS_FORK,
        SCHED_PROCESS_EXEC,
        SCHED_PROCESS_EXIT,
        SOCKOPS,
        GO_NEWPROC1,
        GO_NEWPROC1_RET,
        GO_HTTP_ROUNDTRIP,
        GO_HTTP_REQUEST_WRITE,
        GO_HTTP_ROUTE_RET,
        GO_HTTP_SERVE,
        GO_RPC_CLIENT_SEND,
        GO_RPC_CLIENT_WRITE,
        GO_RPC_CLIENT_DONE,
        GO_RPC_SERVER_CALL,
        GO_RPC_SERVER_RESPOND,
        GRPC_INVOKE,
        GRPC_INVOKE_RET,
        GRPC_NEW_STREAM,
        GRPC_NEW_STREAM_RET,
        GRPC_STREAM_FINISH,
        GRPC_EXECUTE_AND_PUT,
        GRPC_ORIGINATE_STREAM,
        GRPC_HANDLE_STREAM,
        GRPC_WRITE_STATUS,
        GRPC_HANDLE_STREAM_RET,
        GO_NEWPROC1_MULTI,
        GO_NEWPROC1_RET_MULTI,
        GO_HTTP_ROUNDTRIP_MULTI,
        GO_HTTP_REQUEST_WRITE_MULTI,
        GO_HTTP_ROUTE_RET_MULTI,
        GO_HTTP_SERVE_MULTI,
        GO_RPC_CLIENT_SEND_MULTI,
        GO_RPC_CLIENT_WRITE_MULTI,
        GO_RPC_CLIENT_DONE_MULTI,
        GO_RPC_SERVER_CALL_MULTI,
        GO_RPC_SERVER_RESPOND_MULTI,
        GRPC_INVOKE_MULTI,
        GRPC_INVOKE_RET_MULTI,
        GRPC_NEW_STREAM_MULTI,
        GRPC_NEW_STREAM_RET_MULTI,
        GRPC_STREAM_FINISH_MULTI,
        GRPC_EXECUTE_AND_PUT_MULTI,
        GRPC_ORIGINATE_STREAM_MULTI,
        GRPC_HANDLE_STREAM_MULTI,
        GRPC_WRITE_STATUS_MULTI,
        GRPC_HANDLE_STREAM_RET_MULTI,
        GO_TLS_WRITE,
        GO_TLS_READ,
        GO_TLS_READ_RET,
        GO_TLS_EMIT_STEP,
        GO_TLS_WRITE_MULTI,
        GO_TLS_READ_MULTI,
        GO_TLS_READ_RET_MULTI,
        GO_TLS_EMIT_STEP_MULTI,
        GO_TLS_HANDSHAKE,
        GO_TLS_HANDSHAKE_RET,
        GO_TLS_HANDSHAKE_MULTI,
        GO_TLS_HANDSHAKE_RET_MULTI,
        SSL_WRITE,
        SSL_READ,
        SSL_WRITE_EX,
        SSL_READ_EX,
        SSL_RET,
        SSL_FREE,
        SSL_DO_HANDSHAKE,
        SSL_HANDSHAKE_RET,
        SSL_EMIT_STEP,
        CAP_KPROBE,
        CAP_FENTRY,
        CAP_UPROBE,
        CAP_TP_BTF,
        CAP_SOCK_OPS,
        CAP_WRITE_USER,
    ];
}
