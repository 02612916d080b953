//! What the database and messaging tests share: the servers they start (each in a temporary
//! directory, killed on drop) and the ways they pick spans out of what the receiver got.

use std::process::{Child, Command};
use std::time::Duration;

pub use crate::harness::TempDir;
use crate::harness::{Agent, Service, args, fixtures_bin, fixtures_src, grpc_env, python_bin, wait_until};
use crate::receiver::{ReceivedPoint, ReceivedSpan, Receiver, SpanKind};
use crate::scenarios::str_attr;

/// A server the test started, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// SIGQUIT stops PostgreSQL at once (its backends follow); SIGKILL the rest.
    pub signal: i32,
    /// Signal the child's whole process group (a server started through a script that it
    /// put in a group of its own).
    pub group: bool,
    pub dir: TempDir,
}

impl Server {
    pub fn new(child: Child, port: u16, signal: i32, dir: TempDir) -> Self {
        Self { child, port, signal, group: false, dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: a signal to our own child (or its process group, which it leads).
        unsafe { libc::kill(if self.group { -pid } else { pid }, self.signal) };
        let _ = self.child.wait();
    }
}

/// The trace of the request to `path`: its server span and every other span of its trace.
pub fn trace_of<'a>(spans: &'a [ReceivedSpan], path: &str) -> (&'a ReceivedSpan, Vec<&'a ReceivedSpan>) {
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server && str_attr(s, "url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}: {spans:#?}"));
    let rest = spans.iter().filter(|s| s.trace_id == server.trace_id && s.span_id != server.span_id).collect();
    (server, rest)
}

pub fn sorted_names(spans: &[&ReceivedSpan]) -> Vec<String> {
    let mut v: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
    v.sort();
    v
}

/// The spans of one messaging system.
pub fn messaging_spans(spans: &[ReceivedSpan], system: &str) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| str_attr(s, "messaging.system") == Some(system)).cloned().collect()
}

/// The latest point of `messaging.client.operation.duration` for `service`, the operation `op`
/// and the `error.type` `error` (the series are cumulative).
pub fn latest_messaging_point(
    points: &[ReceivedPoint],
    service: &str,
    op: &str,
    error: Option<&str>,
) -> Option<ReceivedPoint> {
    points
        .iter()
        .filter(|p| {
            p.metric == "messaging.client.operation.duration"
                && p.resource.get("service.name").map(String::as_str) == Some(service)
                && p.attr_str("messaging.operation.name").as_deref() == Some(op)
                && p.attr_str("error.type").as_deref() == error
        })
        .max_by_key(|p| p.time_unix_nano)
        .cloned()
}

/// Which fixture serves the requests: a Python script of tests/fixtures/python or a Go program
/// built from tests/fixtures/db.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    Go,
}

/// The fixture `python` (a script's file name) or `go` (a program's name) for `lang`, with
/// `flags` (name and value; `--name` for Python, `-name` for Go) and `OTEL_SERVICE_NAME`.
pub fn fixture(lang: Lang, python: &str, go: &str, service_name: &str, flags: &[(&str, &str)]) -> Command {
    let (mut cmd, dash) = match lang {
        Lang::Python => {
            let mut c = Command::new(python_bin());
            c.arg(fixtures_src().join("python").join(python));
            (c, "--")
        }
        Lang::Go => (Command::new(fixtures_bin().join(go)), "-"),
    };
    for (name, value) in flags {
        cmd.arg(format!("{dash}{name}")).arg(value);
    }
    cmd.env("OTEL_SERVICE_NAME", service_name);
    cmd
}

/// Starts `cmd` as the service `name`, then an agent tracing it that exports spans and (every
/// 500 ms) metrics to `rx`; for a Go program, waits until its Go probes are attached.
pub fn start_traced(lang: Lang, name: &str, cmd: Command, rx: &Receiver) -> (Service, Agent) {
    let service = Service::start(name, cmd).unwrap_or_else(|e| panic!("service {name}: {e:#}"));
    let pid = service.pid();
    let mut env = grpc_env(rx);
    env.push(("OTEL_METRIC_EXPORT_INTERVAL", "500".into()));
    let agent = Agent::start(&args(&["--pid", &pid.to_string()]), &env).expect("agent");
    if lang == Lang::Go {
        wait_until("Go probes attached", Duration::from_secs(30), || {
            agent.log_text().contains(&format!("pid {pid}: Go "))
        })
        .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log_text()));
    }
    (service, agent)
}
