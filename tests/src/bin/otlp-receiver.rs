//! Standalone OTLP trace receiver: prints every received span as one JSON line on stdout.
//!
//! ```text
//! otlp-receiver [--host 127.0.0.1] [--grpc-port 4317] [--http-port 4318] [--delay-ms 0]
//! ```
//!
//! Port 0 picks a free port. The listening endpoints are printed on stderr as
//! `otlp-receiver grpc=http://HOST:PORT http=http://HOST:PORT`; stdout carries only spans, so
//! scripts can pipe it into `jq` or read it line by line. Stops on Ctrl-C / SIGTERM or when
//! stdout is closed.
//!
//! Lines on stdin switch the gRPC trace service: `discard` answers every export OK without
//! decoding it (a collector that costs nothing, for throughput measurements), `decode` goes
//! back to decoding and printing. Each switch is confirmed on stdout by `# mode discard` or
//! `# mode decode`; while discarding, `# discarded exports=N bytes=M` (running totals) follows
//! each export. Lines starting with `#` are never spans.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use tracer_tests::receiver::Receiver;

const USAGE: &str = "usage: otlp-receiver [--host ADDR] [--grpc-port PORT] [--http-port PORT] [--delay-ms MS]";

struct Args {
    host: IpAddr,
    grpc_port: u16,
    http_port: u16,
    /// Each export is accepted only after this many milliseconds (a slow collector).
    delay_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { host: IpAddr::V4(Ipv4Addr::LOCALHOST), grpc_port: 4317, http_port: 4318, delay_ms: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |what| format!("{flag}: {value:?} is not {what}\n{USAGE}");
        match flag.as_str() {
            "--host" => args.host = value.parse().map_err(|_| bad("an IP address"))?,
            "--grpc-port" => args.grpc_port = value.parse().map_err(|_| bad("a port"))?,
            "--http-port" => args.http_port = value.parse().map_err(|_| bad("a port"))?,
            "--delay-ms" => args.delay_ms = value.parse().map_err(|_| bad("milliseconds"))?,
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let receiver = match Receiver::start_on(
        SocketAddr::new(args.host, args.grpc_port),
        SocketAddr::new(args.host, args.http_port),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otlp-receiver: {e}");
            return ExitCode::FAILURE;
        }
    };
    receiver.set_delay(std::time::Duration::from_millis(args.delay_ms));
    let receiver = std::sync::Arc::new(receiver);
    {
        let receiver = receiver.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { return };
                let on = match line.trim() {
                    "discard" => true,
                    "decode" => false,
                    other => {
                        eprintln!("otlp-receiver: unknown command {other:?} (discard, decode)");
                        continue;
                    }
                };
                receiver.set_discard(on);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "# mode {}", if on { "discard" } else { "decode" });
                let _ = out.flush();
            }
        });
    }
    let mut discarded = receiver.discarded();
    eprintln!("otlp-receiver grpc=http://{} http=http://{}", receiver.grpc_addr(), receiver.http_addr());

    let mut changes = receiver.watch();
    let shutdown = terminated();
    tokio::pin!(shutdown);
    loop {
        changes.borrow_and_update();
        // Printed spans are forgotten: stdout is the record, and memory stays flat however
        // long the receiver runs.
        let new = receiver.take_spans();
        let mut out = std::io::stdout().lock();
        for span in new {
            if writeln!(out, "{}", span.to_json()).is_err() {
                return ExitCode::SUCCESS; // reader went away
            }
        }
        if out.flush().is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        tokio::select! {
            _ = &mut shutdown => return ExitCode::SUCCESS,
            changed = changes.changed() => if changed.is_err() { return ExitCode::SUCCESS },
            changed = discarded.changed() => {
                if changed.is_err() {
                    return ExitCode::SUCCESS;
                }
                let (n, bytes) = *discarded.borrow_and_update();
                let mut out = std::io::stdout().lock();
                if writeln!(out, "# discarded exports={n} bytes={bytes}").and_then(|()| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}
