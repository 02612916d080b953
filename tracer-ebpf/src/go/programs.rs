//! The Go uprobe programs, each built twice from one body: as a classic uprobe (one perf event
//! per attach point) and as a multi-uprobe (`uprobe.multi`: one BPF link for all of a program's
//! points in a process, Linux 6.6 and later). The agent loads one set, the multi one where the
//! kernel offers it with a process-wide pid filter.
//!
//! Why both: closing a uprobe's perf event waits for an RCU grace period under the kernel's
//! `event_mutex`, so detaching a Go process's nine or more points one by one took about a second
//! (at every stop, and whenever a traced Go process exits); a multi-uprobe link detaches all of
//! its points with one wait, and the links of a process detach concurrently.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use super::{
    context, grpc, http_client, http_route, netrpc, runtime,
    tls::{self, GO_TLS_PROGS, GO_TLS_PROGS_MULTI},
};

macro_rules! both {
    ($($single:ident, $multi:ident => $body:path;)*) => {$(
        #[uprobe]
        pub fn $single(ctx: ProbeContext) -> u32 {
            $body(ctx)
        }
        #[uprobe(multi)]
        pub fn $multi(ctx: ProbeContext) -> u32 {
            $body(ctx)
        }
    )*};
}

both! {
    go_newproc1, go_newproc1_multi => runtime::go_newproc1;
    go_newproc1_ret, go_newproc1_ret_multi => runtime::go_newproc1_ret;
    go_http_roundtrip, go_http_roundtrip_multi => http_client::go_http_roundtrip;
    go_http_request_write, go_http_request_write_multi => http_client::go_http_request_write;
    go_http_route_ret, go_http_route_ret_multi => http_route::go_http_route_ret;
    go_http_serve, go_http_serve_multi => context::go_http_serve;
    go_rpc_client_send, go_rpc_client_send_multi => netrpc::go_rpc_client_send;
    go_rpc_client_write, go_rpc_client_write_multi => netrpc::go_rpc_client_write;
    go_rpc_client_done, go_rpc_client_done_multi => netrpc::go_rpc_client_done;
    go_rpc_server_call, go_rpc_server_call_multi => netrpc::go_rpc_server_call;
    go_rpc_server_respond, go_rpc_server_respond_multi => netrpc::go_rpc_server_respond;
    grpc_invoke, grpc_invoke_multi => grpc::grpc_invoke;
    grpc_invoke_ret, grpc_invoke_ret_multi => grpc::grpc_invoke_ret;
    grpc_new_stream, grpc_new_stream_multi => grpc::grpc_new_stream;
    grpc_new_stream_ret, grpc_new_stream_ret_multi => grpc::grpc_new_stream_ret;
    grpc_stream_finish, grpc_stream_finish_multi => grpc::grpc_stream_finish;
    grpc_execute_and_put, grpc_execute_and_put_multi => grpc::grpc_execute_and_put;
    grpc_originate_stream, grpc_originate_stream_multi => grpc::grpc_originate_stream;
    grpc_handle_stream, grpc_handle_stream_multi => grpc::grpc_handle_stream;
    grpc_write_status, grpc_write_status_multi => grpc::grpc_write_status;
    grpc_handle_stream_ret, grpc_handle_stream_ret_multi => grpc::grpc_handle_stream_ret;
    go_tls_handshake, go_tls_handshake_multi => tls::go_tls_handshake;
    go_tls_handshake_ret, go_tls_handshake_ret_multi => tls::go_tls_handshake_ret;
}

/// The crypto/tls programs: each set tail-calls the emitter of its own type.
macro_rules! tls_both {
    ($($single:ident, $multi:ident => $body:path;)*) => {$(
        #[uprobe]
        pub fn $single(ctx: ProbeContext) -> u32 {
            $body(&ctx, &GO_TLS_PROGS)
        }
        #[uprobe(multi)]
        pub fn $multi(ctx: ProbeContext) -> u32 {
            $body(&ctx, &GO_TLS_PROGS_MULTI)
        }
    )*};
}

tls_both! {
    go_tls_write, go_tls_write_multi => tls::go_tls_write;
    go_tls_read_ret, go_tls_read_ret_multi => tls::go_tls_read_ret;
    go_tls_emit_step, go_tls_emit_step_multi => tls::go_tls_emit_step;
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    tls::go_tls_read(&ctx)
}

#[uprobe(multi)]
pub fn go_tls_read_multi(ctx: ProbeContext) -> u32 {
    tls::go_tls_read(&ctx)
}
