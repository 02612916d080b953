//! `tracer`: wiring only. See the library modules for the agent itself.

use clap::Parser as _;
use tracer_user::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.format_timestamp_millis();
    if let Command::Watch(w) = &cli.command {
        // The terminal belongs to the view: the log goes to --log-file or nowhere.
        match w.log_file.as_ref().map(std::fs::File::create) {
            Some(Ok(file)) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Some(Err(e)) => {
                eprintln!("tracer: --log-file: {e}");
                return std::process::ExitCode::FAILURE;
            }
            None => {
                logger.filter_level(log::LevelFilter::Off);
            }
        }
    }
    logger.init();
    let result = match cli.command {
        Command::Doctor { verbose } => {
            let report = tracer_user::kernel::doctor::run_checks(verbose);
            tracer_user::kernel::doctor::print(&report);
            let _ = std::hint::black_box(tracer_user::kernel::doctor::tracer_doctor_uprobe_target());
            Ok(())
        }
        Command::GoInspect { offsets_table, grpc_offsets_table, binaries } => {
            tracer_user::golang::inspect_command(&binaries, offsets_table, grpc_offsets_table)
        }
        Command::Watch(args) => tracer_user::watch::main(args),
        // One thread for the whole agent: the ring's drain, the span pipeline, the exporter's
        // tasks and the timers. With a worker thread beside the main one, every timer tick and
        // every batch handed to the exporter woke the other thread, and a span was allocated
        // on one thread and freed on the other; measured on the benchmark's loads, this one
        // thread takes 13-38 % less agent CPU per request and 3-10 times fewer context
        // switches, for the same throughput (docs/benchmarks.md).
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tracer_user::agent::run(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
