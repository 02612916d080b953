//! The kernel programs' own log (aya-log) in the agent's log.
//!
//! The kernel programs log rare diagnostic events (a table that refuses an entry, a user-memory
//! read that fails, a Go layout that does not match, a full ring buffer), each kind at most once
//! per second per CPU. Their level is written into the object before it is loaded, from the
//! agent's log filter for [`TARGET`]: at the default filter (`info`) it is off, and every kernel
//! statement (all are `debug`) is dead code the verifier removes, so it costs nothing;
//! `RUST_LOG=info,tracer::kernel=debug` turns them on. Lines come out under
//! `tracer::kernel::<module of the kernel program>`, e.g. `tracer::kernel::socket::emit`.

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Level, Log, Metadata, Record};
use std::sync::Mutex;
use tokio::io::unix::AsyncFd;

/// The log target of every kernel line (and its prefix).
pub const TARGET: &str = "tracer::kernel";

/// The kernel crate's modules that log, each a target below [`TARGET`].
const AREAS: &[&str] = &["maps", "socket", "socket::emit", "go", "go::grpc", "doctor"];

/// The object's global holding the kernel programs' level (aya-log's `AYA_LOG_LEVEL`).
pub const LEVEL_GLOBAL: &str = tracer_common::names::globals::AYA_LOG_LEVEL;

/// The most verbose level `enabled` allows for [`TARGET`] or any of its areas, as the kernel
/// programs' level (`aya_log::Level` as u8: 4 debug, 5 trace). The kernel logs at debug and
/// trace only (what it has to say is diagnostic; what an operator must see is counted and
/// reported by the agent), so anything less verbose is 0: every statement off.
pub fn level_from(enabled: impl Fn(&str, Level) -> bool) -> u8 {
    let targets: Vec<String> =
        std::iter::once(TARGET.to_owned()).chain(AREAS.iter().map(|a| format!("{TARGET}::{a}"))).collect();
    [Level::Trace, Level::Debug].into_iter().find(|&l| targets.iter().any(|t| enabled(t, l))).map_or(0, |l| l as u8)
}

/// The kernel programs' level from the agent's logger (`RUST_LOG`).
pub fn level() -> u8 {
    level_from(|target, level| log::logger().enabled(&Metadata::builder().target(target).level(level).build()))
}

/// A level for people: what [`level`] returned.
pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "off",
        1..=4 => "debug",
        _ => "trace",
    }
}

/// `tracer::socket::emit` (a kernel module path) -> `tracer::kernel::socket::emit`.
pub fn retarget(target: &str) -> String {
    format!("{TARGET}::{}", target.strip_prefix("tracer::").unwrap_or(target))
}

/// Hands each kernel record to the agent's logger under its [`retarget`]ed target.
struct Forward;

impl Log for Forward {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        let t = retarget(m.target());
        log::logger().enabled(&Metadata::builder().level(m.level()).target(&t).build())
    }

    fn log(&self, r: &Record<'_>) {
        let t = retarget(r.target());
        let rec = Record::builder()
            .args(*r.args())
            .level(r.level())
            .target(&t)
            .module_path(r.module_path())
            .file(r.file())
            .line(r.line())
            .build();
        if log::logger().enabled(rec.metadata()) {
            log::logger().log(&rec);
        }
    }

    fn flush(&self) {}
}

/// The kernel log ring, read on the agent's runtime.
pub struct KernelLog {
    fd: AsyncFd<EbpfLogger<Forward>>,
}

impl KernelLog {
    /// Starts reading the kernel log of `ebpf`, loaded at `level`; `None` when the level is off
    /// (nothing can be written) or the ring cannot be read (said once).
    pub fn start(ebpf: &mut Ebpf, level: u8) -> Option<Self> {
        if level == 0 {
            return None;
        }
        let logger = match EbpfLogger::init_with_logger(ebpf, Forward) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("kernel log off: {e}");
                return None;
            }
        };
        // SAFETY: the logger owns the ring's map fd, which stays open and unchanged for as long
        // as the AsyncFd (which owns the logger) lives.
        match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
            Ok(fd) => Some(Self { fd }),
            Err(e) => {
                log::warn!("kernel log off: polling its ring: {e}");
                None
            }
        }
    }

    /// Waits until lines are written, then forwards them.
    pub async fn pump(&mut self) {
        match self.fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                log::warn!("kernel log: {e}");
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forwards what is waiting now.
    pub fn flush(&mut self) {
        self.fd.get_mut().flush();
    }
}

/// [`KernelLog::pump`] when there is a kernel log; never ready otherwise (for `select!`).
pub async fn pump(log: Option<&mut KernelLog>) {
    match log {
        Some(l) => l.pump().await,
        None => std::future::pending().await,
    }
}

/// Kernel lines kept as text (for `tracer doctor --verbose`, which prints them itself).
pub struct Collect(Mutex<Vec<String>>);

impl Default for Collect {
    fn default() -> Self {
        Self::new()
    }
}

impl Collect {
    pub const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Log for &'static Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &Record<'_>) {
        let line = format!("[{} {}] {}", r.level(), retarget(r.target()), r.args());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_follows_the_filter_of_the_kernel_targets() {
        // RUST_LOG=info (the default): off.
        assert_eq!(level_from(|_, l| l <= Level::Info), 0);
        assert_eq!(level_from(|_, _| false), 0);
        // RUST_LOG=info,tracer::kernel=debug
        let kernel_debug = |t: &str, l: Level| if t.starts_with(TARGET) { l <= Level::Debug } else { l <= Level::Info };
        assert_eq!(level_from(kernel_debug), Level::Debug as u8);
        // Only one area asked for: the level is still raised (the filter drops the others).
        let go_trace = |t: &str, l: Level| t == "tracer::kernel::go" && l <= Level::Trace;
        assert_eq!(level_from(go_trace), Level::Trace as u8);
        assert_eq!(level_name(level_from(kernel_debug)), "debug");
    }

    #[test]
    fn kernel_module_paths_go_under_the_kernel_target() {
        assert_eq!(retarget("tracer::socket::emit"), "tracer::kernel::socket::emit");
        assert_eq!(retarget("other"), "tracer::kernel::other");
    }

    #[test]
    fn level_global_is_aya_logs() {
        assert_eq!(LEVEL_GLOBAL, aya_log::LEVEL);
    }

    #[test]
    fn log_levels_match_aya_log_numbering() {
        // The kernel compares `level as u8 <= AYA_LOG_LEVEL` with aya-log's numbering.
        assert_eq!(Level::Error as u8, aya_log::Level::Error as u8);
        assert_eq!(Level::Debug as u8, aya_log::Level::Debug as u8);
        assert_eq!(Level::Trace as u8, aya_log::Level::Trace as u8);
    }
}
