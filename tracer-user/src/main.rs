//! `tracer`: wiring only. See the library modules for the agent itself.

use clap::Parser as _;
use tracer_user::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => {
            let report = tracer_user::doctor::run_checks();
            tracer_user::doctor::print(&report);
            let _ = std::hint::black_box(tracer_user::doctor::tracer_doctor_uprobe_target());
            Ok(())
        }
        Command::GoInspect { offsets_table, grpc_offsets_table, binaries } => {
            if grpc_offsets_table {
                tracer_user::grpc::offsets_table_command(&binaries)
            } else {
                tracer_user::gobin::inspect_command(&binaries, offsets_table)
            }
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tracer_user::run::run(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
