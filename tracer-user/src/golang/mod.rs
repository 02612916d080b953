//! Go programs: reading their binaries (`gobin`), planning and attaching the uprobes that link
//! goroutines and report net/http routes, net/rpc and grpc-go calls and TLS plaintext
//! (`probes`, `netrpc`, `grpc`, `tls`), and `tracer go-inspect`. Control plane only: the records these probes write are
//! decoded by `crate::capture` and parsed by `crate::protocols`.

pub mod context;
pub mod gobin;
pub mod grpc;
pub mod netrpc;
pub mod probes;
pub mod tls;

/// Functions the agent probes in Go programs, for `tracer go-inspect`.
pub fn probed_functions() -> Vec<&'static str> {
    let mut f = vec![
        probes::NEWPROC1,
        probes::ROUNDTRIP,
        probes::REQUEST_WRITE,
        probes::WRITE_LOOP,
        probes::MUX_SERVE,
        probes::FIND_HANDLER,
        probes::MUX_HANDLER,
        context::SERVE,
    ];
    f.extend(netrpc::FUNCTIONS);
    f.extend(grpc::FUNCTIONS);
    f.extend([tls::WRITE, tls::READ]);
    f
}

/// `tracer go-inspect`: a summary of each binary, or the source of an offsets table.
pub fn inspect_command(
    binaries: &[std::path::PathBuf],
    offsets_table: bool,
    grpc_offsets_table: bool,
) -> anyhow::Result<()> {
    if grpc_offsets_table {
        grpc::offsets_table_command(binaries)
    } else {
        gobin::inspect_command(binaries, offsets_table, &probed_functions())
    }
}
