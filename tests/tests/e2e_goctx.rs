//! Privileged end-to-end tests of context linking in Go: a handler hands its outgoing HTTP or
//! gRPC calls, with the request's `context.Context` (or one derived from it), to goroutines it
//! did not start (a worker pool and a pipeline started in main, an errgroup), and each call must
//! be the child of its own request's server span, found from the context it carries rather
//! than from goroutine ancestry; a call whose context was detached on purpose
//! (`context.Background()`) must be the root of a trace of its own. A gRPC server's handler
//! does the same with its stream's context, one hop down the chain. Each test sends 40 requests
//! named by id from 4 client threads (4 in flight) and counts every edge right, missing or
//! wrong (`tracer_tests::goctx`). The services are tests/fixtures/go/cmd/ctxlink and
//! tests/fixtures/goctx/cmd/ctxgrpc. Run as root with `cargo xtask e2e goctx`.

use tracer_tests::goctx::{Expect, Mode, over_grpc, over_http, relay};
use tracer_tests::harness::fixtures_bin;

fn ctxlink(path: &str, expect: Expect) {
    over_http(&fixtures_bin().join("ctxlink"), "ctxlink", &Mode { path, calls: 1, expect });
}

/// Workers started in main() serve a channel of jobs, each carrying its request's context; a
/// worker calls with `http.NewRequestWithContext(job context)`.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_pool_http() {
    ctxlink("/pool/http/", Expect::Linked);
}

/// The same pool, fed by handlers of `POST` requests that read their bodies first: net/http
/// starts its per-request goroutine when the body is read to the end, on the goroutine that
/// reads it, and the request's context is recorded there once that goroutine is known to serve
/// the request's connection.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_pool_http_post() {
    ctxlink("/post/pool/http/", Expect::Linked);
}

/// The same pool making unary grpc-go calls with `context.WithTimeout(job context)`.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_pool_grpc() {
    let mode = Mode { path: "/pool/grpc/", calls: 1, expect: Expect::Linked };
    over_grpc(&fixtures_bin().join("ctxgrpc"), "ctxgrpc", &mode);
}

/// A gRPC server's handler hands its call to a pool: the front's pool calls
/// `/ctxlink.Jobs/Job<id>` of a grpc-go server (ctxgrpc `-role relay`) whose handler puts a job
/// with `context.WithTimeout(stream.Context())` on the channel of workers started in main; a
/// worker GETs `/bytes/<id>` of a Go net/http server. Each relay client span must be the child
/// of its own relay server span (the request's context recorded at grpc-go's `handleStream`),
/// and the front's calls linked as in `goctx_pool_grpc`.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_grpc_server_pool() {
    relay(&fixtures_bin().join("ctxgrpc"), "ctxgrpc-relay");
}

/// `errgroup.WithContext(r.Context())` with `SetLimit(2)`: four calls per request, two at a
/// time, each the child of the request's server span.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_errgroup() {
    let mode = Mode { path: "/errgroup/", calls: 4, expect: Expect::Linked };
    over_http(&fixtures_bin().join("ctxgrpc"), "ctxgrpc", &mode);
}

/// Two stages started in main(): stage 1 derives `context.WithValue(job context)` and passes
/// the job on through a second channel; stage 2 calls.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_pipeline() {
    ctxlink("/pipeline/", Expect::Linked);
}

/// A pool worker calls with `context.Background()` instead of the job's context: the call
/// belongs to no request, so its client span is a root (and its downstream server span its
/// child), never under the request's server span nor anyone else's.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_detached_background() {
    ctxlink("/detached/background/", Expect::Roots);
}

/// A pool worker calls with `context.WithoutCancel` of the context of the previous request on
/// the same keep-alive connection, which has ended (the connection's first request: of
/// `context.Background()`): each call a root. HTTP/1 requests of one connection share its
/// entry in the kernel's table of request contexts, so this is the test that a context of an
/// ended request is never taken for the request the connection serves now.
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_stale_request_context() {
    ctxlink("/stale/", Expect::Roots);
}

/// A pool worker calls with `context.WithoutCancel(job context)`: not cancelled with the
/// request, but it keeps the request's values, so the call is still the request's child (as an
/// OpenTelemetry SDK, which finds the parent span among those values, would link it).
#[test]
#[ignore = "needs root and the built agent: cargo xtask e2e"]
fn goctx_detached_withoutcancel() {
    ctxlink("/detached/withoutcancel/", Expect::Linked);
}
