//! Golden tests: recorded event streams go through the ring-buffer decoder, the assembler and the
//! correlator, and the spans that come out are compared with expected text.
//!
//! # `tests/golden/NAME.events`
//!
//! One event per line. Blank lines and lines starting with `#` are ignored. Words are `key=value`
//! or bare; a value may be `"quoted"` with the escapes `\r \n \t \0 \\ \" \xNN`.
//!
//! ```text
//! tuple fd=3 local=10.0.0.1:8080 remote=10.0.0.2:51000   # addresses of fd 3 (no event)
//! conn  fd=3 role=server at=90
//! data  fd=3 in  start=100 end=110 head="GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
//! data  fd=3 out start=200 end=210 len=70000 head="HTTP/1.1 200 OK\r\n..." tail="...0\r\n\r\n"
//! close fd=3 at=300
//! exit  at=400
//! tick  at=5000000300
//! propagation off
//! ```
//!
//! * `data`: `in` (the traced process read the bytes) or `out` (it wrote them), `start=`/`end=`
//!   (CLOCK_MONOTONIC ns at syscall entry/exit), `head=` (captured first bytes), optional
//!   `tail=` (captured last bytes), `len=` (true byte count; default head + tail length, so give
//!   it whenever bytes between head and tail were not captured), `sock=` (default derived from
//!   tgid and fd), `local=`/`remote=` (`1.2.3.4:80` or `[::1]:80`; default the fd's last
//!   `tuple` line, else 127.0.0.1:8080 and 127.0.0.1:50000), `role=client|server|unknown` (the
//!   kernel's hint, default unknown), `sys=` (syscall number; default read/write),
//!   `ctx=TRACE/SPAN[/PARENT][/remote|/thread]` (kernel trace context: 32 and 16 hex digits, an
//!   optional 16-digit parent, and whether the parent came over the wire or from the thread;
//!   default none), `proto=http1|kafka` (the protocol the kernel classified; default http1).
//! * `conn`: `role=client|server|unknown`, `at=` (the call's return), `start=` (its entry;
//!   default `at`), `errno=` (a connect that failed; default none: it succeeded).
//!   `handshake`: `start=` (the entry of the connect it belongs to), `at=`, `ok=1|0`
//!   (established or failed; the addresses are the fd's `tuple`). `close`: `at=`. `exit`: `at=`. `tick`: `at=`
//!   runs the assembler's timeouts at that time, shows the correlator what is in flight and
//!   emits the spans whose hold is over.
//! * `propagation off|same-host|on`: the correlator's mode (default same-host); give it before
//!   the first event.
//! * Every event takes `tgid=` (default 1) and `tid=` (default the tgid); `fd=` defaults to 3.
//!
//! Each event is encoded as the kernel lays it out and decoded with `events::decode`. Exchanges
//! the assembler completes go to the correlator at the time of the event (its `end=` or `at=`);
//! the correlator holds them one second. After the last line the assembler and the correlator
//! are flushed.
//!
//! # `tests/golden/NAME.expected`
//!
//! The spans in emission order, then the assembler's and the correlator's counters:
//!
//! ```text
//! span 1: SERVER GET start=110 end=210 pid=1 status=UNSET
//!   trace=T1 span=#1 parent=#2 remote
//!   client.address = "10.0.0.2"
//!   ...attributes sorted by key...
//! stats: spans_emitted=1 parse_errors=0 ...
//! correlator: received=1 emitted=1 ...
//! ```
//!
//! Times are the events' monotonic ns (the clock maps monotonic zero to the Unix epoch). An id
//! that appears (in hex) in the `.events` file, from `ctx=` or a `traceparent` header, is shown
//! in hex; other (random) ids are shown as names: trace ids `T1`, `T2`, ... in order of first
//! appearance, span ids `#N` for the N-th span of the output (`?` for a parent that is neither).
//! `remote` marks a parent in another process or host. A span's links follow its ids, one
//! `link trace=… span=…` line each, then its events, one `event NAME at=… key=value…` line
//! each. Run with `UPDATE_GOLDEN=1` to rewrite the
//! expected files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tracer_common::{ConnTuple, Propagation, Proto, Role, Syscall};
use tracer_user::agent::pipeline::{Pipeline, PipelineConfig};
use tracer_user::capture::event::{Data, Event, Handshake, KernelCtx};
use tracer_user::capture::{decode, encode};
use tracer_user::clock::Clock;
use tracer_user::model::{SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};

/// One `key=value` or bare word.
struct Word {
    key: String,
    value: Option<Vec<u8>>,
}

fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match chars.next().ok_or("unterminated string")? {
            '"' => return Ok(out),
            '\\' => match chars.next().ok_or("dangling escape")? {
                'r' => out.push(b'\r'),
                'n' => out.push(b'\n'),
                't' => out.push(b'\t'),
                '0' => out.push(0),
                '\\' => out.push(b'\\'),
                '"' => out.push(b'"'),
                'x' => {
                    let hex: String = [chars.next(), chars.next()].into_iter().flatten().collect();
                    out.push(u8::from_str_radix(&hex, 16).map_err(|_| format!("bad \\x{hex}"))?);
                }
                c => return Err(format!("unknown escape \\{c}")),
            },
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn words(line: &str) -> Result<Vec<Word>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none_or(|&c| c == '#') {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        let value = if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                Some(unescape(&mut chars)?)
            } else {
                let mut v = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    v.push(c);
                }
                Some(v.into_bytes())
            }
        } else {
            None
        };
        out.push(Word { key, value });
    }
}

/// The `key=value` words of a line, checked off as they are used.
struct Fields {
    values: HashMap<String, Vec<u8>>,
    flags: Vec<String>,
}

impl Fields {
    fn new(ws: Vec<Word>) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        for w in ws {
            match w.value {
                Some(v) => {
                    if values.insert(w.key.clone(), v).is_some() {
                        return Err(format!("{} given twice", w.key));
                    }
                }
                None => flags.push(w.key),
            }
        }
        Ok(Self { values, flags })
    }

    fn take(&mut self, key: &str) -> Option<Vec<u8>> {
        self.values.remove(key)
    }

    fn text(&mut self, key: &str) -> Result<Option<String>, String> {
        self.take(key).map(|v| String::from_utf8(v).map_err(|_| format!("{key}: not UTF-8"))).transpose()
    }

    fn num(&mut self, key: &str) -> Result<Option<u64>, String> {
        self.text(key)?
            .map(|s| {
                let parsed = match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => s.parse(),
                };
                parsed.map_err(|_| format!("{key}={s}: not a number"))
            })
            .transpose()
    }

    fn need(&mut self, key: &str) -> Result<u64, String> {
        self.num(key)?.ok_or_else(|| format!("missing {key}="))
    }

    fn role(&mut self) -> Result<Role, String> {
        match self.text("role")?.as_deref() {
            None | Some("unknown") => Ok(Role::Unknown),
            Some("client") => Ok(Role::Client),
            Some("server") => Ok(Role::Server),
            Some(r) => Err(format!("unknown role {r}")),
        }
    }

    fn addr(&mut self, key: &str) -> Result<Option<SocketAddr>, String> {
        self.text(key)?.map(|s| s.parse().map_err(|_| format!("{key}={s}: not an address"))).transpose()
    }

    /// Fails on words nobody asked for (typos).
    fn done(self) -> Result<(), String> {
        let mut left: Vec<_> = self.values.into_keys().chain(self.flags).collect();
        left.sort();
        if left.is_empty() { Ok(()) } else { Err(format!("unexpected {}", left.join(", "))) }
    }
}

fn tuple(local: SocketAddr, remote: SocketAddr) -> Result<ConnTuple, String> {
    let mut t = ConnTuple { sport: local.port(), dport: remote.port(), ..Default::default() };
    match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            t.family = 2;
            t.saddr[..4].copy_from_slice(&l.octets());
            t.daddr[..4].copy_from_slice(&r.octets());
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => {
            t.family = 10;
            t.saddr = l.octets();
            t.daddr = r.octets();
        }
        _ => return Err("local and remote of different families".into()),
    }
    Ok(t)
}

enum Step {
    Event(Event),
    Tick(u64),
}

/// A parsed `.events` file.
struct Case {
    mode: Propagation,
    steps: Vec<Step>,
}

fn hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(format!("{s}: want {} hex digits", 2 * N));
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| format!("{s}: not hex"))?;
    }
    Ok(out)
}

/// `TRACE/SPAN[/PARENT][/remote|/thread]`.
fn kernel_ctx(s: &str) -> Result<KernelCtx, String> {
    let mut parts = s.split('/');
    let trace_id = hex::<16>(parts.next().unwrap_or_default())?;
    let span_id = hex::<8>(parts.next().ok_or("ctx needs TRACE/SPAN")?)?;
    let mut k = KernelCtx { trace_id, span_id, parent_id: None, remote_parent: false, thread_parent: false };
    for p in parts {
        match p {
            "remote" => k.remote_parent = true,
            "thread" => k.thread_parent = true,
            _ if k.parent_id.is_none() => k.parent_id = Some(hex::<8>(p)?),
            _ => return Err(format!("ctx: unexpected {p}")),
        }
    }
    Ok(k)
}

/// Parses an `.events` file into decoded events.
fn parse_events(text: &str) -> Result<Case, String> {
    let default_tuple = tuple(
        "127.0.0.1:8080".parse().map_err(|_| "bad default")?,
        "127.0.0.1:50000".parse().map_err(|_| "bad default")?,
    )?;
    let mut tuples: HashMap<(u32, i32), ConnTuple> = HashMap::new();
    let mut steps = Vec::new();
    let mut mode = Propagation::SameHost;
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}", n + 1);
        let mut ws = words(line).map_err(err)?;
        if ws.is_empty() {
            continue;
        }
        let verb = ws.remove(0).key;
        if verb == "propagation" {
            let word = ws.first().filter(|_| ws.len() == 1 && ws[0].value.is_none());
            mode = match word.map(|w| w.key.as_str()) {
                Some("off") => Propagation::Off,
                Some("same-host") => Propagation::SameHost,
                Some("on") => Propagation::On,
                _ => return Err(err("propagation off|same-host|on".into())),
            };
            continue;
        }
        let mut f = Fields::new(ws).map_err(err)?;
        let tgid = f.num("tgid").map_err(err)?.unwrap_or(1) as u32;
        let tid = f.num("tid").map_err(err)?.map_or(tgid, |t| t as u32);
        let fd = f.num("fd").map_err(err)?.unwrap_or(3) as i32;
        let rec = match verb.as_str() {
            "tuple" => {
                let local = f.addr("local").map_err(err)?.ok_or_else(|| err("missing local=".into()))?;
                let remote = f.addr("remote").map_err(err)?.ok_or_else(|| err("missing remote=".into()))?;
                tuples.insert((tgid, fd), tuple(local, remote).map_err(err)?);
                None
            }
            "data" => {
                let egress = match (f.flags.contains(&"in".into()), f.flags.contains(&"out".into())) {
                    (true, false) => false,
                    (false, true) => true,
                    _ => return Err(err("data needs exactly one of in/out".into())),
                };
                f.flags.retain(|w| w != "in" && w != "out");
                let head = f.take("head").unwrap_or_default();
                let tail = f.take("tail").unwrap_or_default();
                let len = f.num("len").map_err(err)?.unwrap_or((head.len() + tail.len()) as u64);
                let mut t = *tuples.get(&(tgid, fd)).unwrap_or(&default_tuple);
                if let (Some(l), Some(r)) = (f.addr("local").map_err(err)?, f.addr("remote").map_err(err)?) {
                    t = tuple(l, r).map_err(err)?;
                }
                let d = Data {
                    start_ns: f.need("start").map_err(err)?,
                    end_ns: f.need("end").map_err(err)?,
                    tgid,
                    tid,
                    fd,
                    sock: f
                        .num("sock")
                        .map_err(err)?
                        .unwrap_or(0xffff_8880_0000_0000 | u64::from(tgid) << 16 | fd as u64),
                    tuple: t,
                    egress,
                    syscall: f
                        .num("sys")
                        .map_err(err)?
                        .map_or(if egress { Syscall::Write as u8 } else { Syscall::Read as u8 }, |s| s as u8),
                    role: f.role().map_err(err)?,
                    proto: match f.text("proto").map_err(err)?.as_deref() {
                        None | Some("http1") => Proto::Http1,
                        Some("kafka") => Proto::Kafka,
                        Some(other) => return Err(err(format!("unknown proto {other:?}"))),
                    },
                    tls: false,
                    ctx: f.text("ctx").map_err(err)?.as_deref().map(kernel_ctx).transpose().map_err(err)?,
                    len: u32::try_from(len).map_err(|_| err("len too large".into()))?,
                    head: Bytes::from(head),
                    tail: Bytes::from(tail),
                };
                Some(encode::data(&d))
            }
            "conn" => {
                let at = f.need("at").map_err(err)?;
                let start = f.num("start").map_err(err)?.unwrap_or(at);
                let ret = match f.num("errno").map_err(err)? {
                    Some(e) => -(e as i32),
                    None => 0,
                };
                Some(encode::conn(at, tgid, tid, fd, f.role().map_err(err)?, start, ret))
            }
            "handshake" => {
                let h = Handshake {
                    ts_ns: f.need("at").map_err(err)?,
                    tgid,
                    tid,
                    fd,
                    established: f.need("ok").map_err(err)? != 0,
                    start_ns: f.need("start").map_err(err)?,
                    tuple: tuples.get(&(tgid, fd)).copied().unwrap_or_default(),
                };
                Some(encode::handshake(&h))
            }
            "close" => {
                let at = f.need("at").map_err(err)?;
                Some(encode::close(at, tgid, tid, fd))
            }
            "exit" => {
                let at = f.need("at").map_err(err)?;
                Some(encode::exit(at, tgid))
            }
            "tick" => {
                steps.push(Step::Tick(f.need("at").map_err(err)?));
                None
            }
            other => return Err(err(format!("unknown event {other}"))),
        };
        f.done().map_err(err)?;
        if let Some(rec) = rec {
            let ev = decode::decode(&Bytes::from(rec)).map_err(|e| err(format!("decode: {e}")))?;
            steps.push(Step::Event(ev));
        }
    }
    Ok(Case { mode, steps })
}

fn ns(t: std::time::SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

/// Names for ids: hex when the `.events` file has them, else `T<n>` / `#<n>`.
struct Names {
    text: String,
    traces: Vec<TraceId>,
    spans: HashMap<SpanId, usize>,
}

impl Names {
    fn new(text: &str, spans: &[SpanRecord]) -> Self {
        Self {
            text: text.to_ascii_lowercase(),
            traces: Vec::new(),
            spans: spans.iter().enumerate().map(|(i, s)| (s.span_id, i + 1)).collect(),
        }
    }

    fn trace(&mut self, t: TraceId) -> String {
        let hex = t.to_string();
        if self.text.contains(&hex) {
            return hex;
        }
        let n = match self.traces.iter().position(|x| *x == t) {
            Some(i) => i + 1,
            None => {
                self.traces.push(t);
                self.traces.len()
            }
        };
        format!("T{n}")
    }

    fn span(&self, s: SpanId) -> String {
        let hex = s.to_string();
        if self.text.contains(&hex) {
            hex
        } else {
            self.spans.get(&s).map_or_else(|| "?".to_owned(), |n| format!("#{n}"))
        }
    }
}

fn render(text: &str, spans: &[SpanRecord], pipeline: &Pipeline) -> String {
    let mut out = String::new();
    let mut names = Names::new(text, spans);
    for (i, s) in spans.iter().enumerate() {
        let kind = match s.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
        };
        let status = match &s.status {
            SpanStatus::Unset => "UNSET".to_owned(),
            SpanStatus::Error(d) => format!("ERROR({d:?})"),
        };
        let _ = writeln!(
            out,
            "span {}: {kind} {} start={} end={} pid={} status={status}",
            i + 1,
            s.name,
            ns(s.start),
            ns(s.end),
            s.pid
        );
        let _ = write!(out, "  trace={} span={}", names.trace(s.trace_id), names.span(s.span_id));
        if let Some(parent) = s.parent_span_id {
            let remote = if s.parent_is_remote { " remote" } else { "" };
            let _ = write!(out, " parent={}{remote}", names.span(parent));
        }
        out.push('\n');
        for l in &s.links {
            let _ = writeln!(out, "  link trace={} span={}", names.trace(l.trace_id), names.span(l.span_id));
        }
        for e in &s.events {
            let attrs: Vec<String> = e.attributes.iter().map(|a| format!(" {}={}", a.key, a.value)).collect();
            let _ = writeln!(out, "  event {} at={}{}", e.name, ns(e.time), attrs.concat());
        }
        let mut attrs: Vec<_> = s.attributes.iter().map(|a| (a.key, a.value.to_string())).collect();
        attrs.sort();
        for (k, v) in attrs {
            let _ = writeln!(out, "  {k} = {v}");
        }
    }
    let all = pipeline.stats();
    let (st, streams) = (all.protocols, all.streams);
    let _ = writeln!(
        out,
        "stats: spans_emitted={} parse_errors={} evictions={} connections={} unanswered_requests={} expired_requests={} unmatched_responses={}",
        st.spans_emitted,
        st.parse_errors,
        streams.evictions,
        streams.connections,
        st.unanswered_requests,
        st.expired_requests,
        st.unmatched_responses
    );
    let c = all.correlator;
    let _ = writeln!(
        out,
        "correlator: received={} emitted={} thread_links={} pairs={} pair_conflicts={} unpaired={} held_longer={} forced={} late_links={} evictions={} id_collisions={}",
        c.received,
        c.emitted,
        c.thread_links,
        c.pairs,
        c.pair_conflicts,
        c.unpaired,
        c.held_longer,
        c.forced,
        c.late_links,
        c.evictions,
        c.id_collisions
    );
    out
}

/// When an event happened, for the correlator's clock.
fn event_time(ev: &Event) -> u64 {
    match ev {
        Event::Data(d) => d.end_ns,
        Event::Close { ts_ns, .. }
        | Event::Conn { ts_ns, .. }
        | Event::TlsHandshake { ts_ns, .. }
        | Event::Handshake(Handshake { ts_ns, .. })
        | Event::Exec { ts_ns, .. }
        | Event::Exit { ts_ns, .. } => *ts_ns,
        Event::Grpc(g) => g.end_ns,
        Event::NetRpc(c) => c.end_ns,
        Event::Route(_) => unreachable!("golden cases hold no route events"),
    }
}

fn run(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case = parse_events(&text)?;
    let config = PipelineConfig::new(case.mode, Duration::from_secs(1));
    let mut pipeline = Pipeline::new(Clock::fixed(UNIX_EPOCH), config);
    let mut spans = Vec::new();
    let mut now = 0;
    for step in &case.steps {
        match step {
            Step::Event(ev) => {
                now = now.max(event_time(ev));
                pipeline.feed(ev, now);
            }
            Step::Tick(at) => {
                now = now.max(*at);
                pipeline.tick(now);
            }
        }
        pipeline.poll(now, &mut spans);
    }
    pipeline.finish(now, &mut spans);
    Ok(render(&text, &spans, &pipeline))
}

fn first_difference(want: &str, got: &str) -> String {
    let (mut w, mut g) = (want.lines(), got.lines());
    for n in 1.. {
        match (w.next(), g.next()) {
            (None, None) => break,
            (a, b) if a == b => continue,
            (a, b) => {
                return format!(
                    "line {n}:\n  expected: {}\n  got:      {}",
                    a.unwrap_or("<end>"),
                    b.unwrap_or("<end>")
                );
            }
        }
    }
    String::new()
}

#[test]
fn golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "events"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let got = match run(case) {
            Ok(got) => got,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected file");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{name}: output differs from {} ({})\n--- got ---\n{got}",
                expected_path.display(),
                first_difference(&want, &got)
            )),
            Err(e) => failures.push(format!("{name}: {}: {e}", expected_path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed (UPDATE_GOLDEN=1 rewrites expected files):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
