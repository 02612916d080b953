//! The HTTP/1 parser through the protocol seam: events in, spans out, as the pipeline runs it
//! (`crate::protocols::Protocols` with `crate::spans::to_span`).

use std::net::Ipv6Addr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tracer_common::{AF_INET, AF_INET6, ConnTuple, Proto, Role, Syscall};

use crate::capture::event::{Data, Event, KernelCtx};
use crate::clock::Clock;
use crate::model::{AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId};
use crate::protocols::Protocols;
use crate::protocols::exchange::{Detail, Exchange, ParentSource, Stamp};
use crate::protocols::protocol::ProtocolConfig;
use crate::streams::StreamsConfig;

/// Limits of the protocols and of the connection table, together.
#[derive(Clone, Copy, Debug)]
struct AssemblerConfig {
    desync_timeout_ns: u64,
    exchange_timeout_ns: u64,
    idle_timeout_ns: u64,
    max_connections: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        let p = ProtocolConfig::default();
        let s = StreamsConfig::default();
        Self {
            desync_timeout_ns: p.desync_timeout_ns,
            exchange_timeout_ns: p.exchange_timeout_ns,
            idle_timeout_ns: s.idle_timeout_ns,
            max_connections: s.max_connections,
        }
    }
}

/// Counters of the protocols and the connection table, together.
#[derive(Debug)]
struct Stats {
    spans_emitted: u64,
    parse_errors: u64,
    unanswered_requests: u64,
    expired_requests: u64,
    unmatched_responses: u64,
    evictions: u64,
    connections: u64,
}

/// Protocols plus span shaping: the stages 3 and 4 of the data path.
struct Assembler {
    clock: Clock,
    protocols: Protocols,
    exchanges: Vec<Exchange>,
}

impl Assembler {
    fn new(clock: Clock) -> Self {
        Self::with_config(clock, AssemblerConfig::default())
    }

    fn with_config(clock: Clock, cfg: AssemblerConfig) -> Self {
        let protocols = ProtocolConfig {
            desync_timeout_ns: cfg.desync_timeout_ns,
            exchange_timeout_ns: cfg.exchange_timeout_ns,
            ..Default::default()
        };
        let streams = StreamsConfig { idle_timeout_ns: cfg.idle_timeout_ns, max_connections: cfg.max_connections };
        Self { clock, protocols: Protocols::new(protocols, streams), exchanges: Vec::new() }
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn spans(&mut self, out: &mut Vec<SpanRecord>) {
        for ex in self.exchanges.drain(..) {
            out.push(crate::spans::to_span(&ex, &self.clock, true));
        }
    }

    fn on_event_exchanges(&mut self, ev: &Event, out: &mut Vec<Exchange>) {
        self.protocols.on_event(ev, out);
    }

    fn on_event(&mut self, ev: &Event, out: &mut Vec<SpanRecord>) {
        self.protocols.on_event(ev, &mut self.exchanges);
        self.spans(out);
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        self.protocols.on_tick(now_ns, &mut self.exchanges);
        self.spans(out);
    }

    fn flush(&mut self, out: &mut Vec<SpanRecord>) {
        self.protocols.flush(&mut self.exchanges);
        self.spans(out);
    }

    fn in_flight(&self) -> Vec<Exchange> {
        let mut v = Vec::new();
        self.protocols.for_each_in_flight(&mut |ex| v.push(ex.clone()));
        v
    }

    fn stats(&self) -> Stats {
        let p = self.protocols.stats();
        let s = self.protocols.streams_stats();
        Stats {
            spans_emitted: p.spans_emitted,
            parse_errors: p.parse_errors,
            unanswered_requests: p.unanswered_requests,
            expired_requests: p.expired_requests,
            unmatched_responses: p.unmatched_responses,
            evictions: s.evictions,
            connections: s.connections,
        }
    }
}

fn traceparent_parent(ex: &Exchange) -> Option<String> {
    match &ex.detail {
        Detail::Http1(d) => d.request.traceparent.map(|t| t.parent_id.to_string()),
        _ => None,
    }
}

fn random_role(rng: &mut impl Rng) -> Role {
    [Role::Unknown, Role::Client, Role::Server][rng.random_range(0..3)]
}

const TGID: u32 = 42;
const FD: i32 = 7;

fn v4_tuple() -> ConnTuple {
    let mut t = ConnTuple { family: AF_INET, sport: 8080, dport: 51000, ..Default::default() };
    t.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    t.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    t
}

/// A data event captured the way the kernel does: 1024-byte head, 64-byte tail.
fn data_on(fd: i32, tuple: ConnTuple, egress: bool, start: u64, end: u64, bytes: &[u8]) -> Event {
    let head = &bytes[..bytes.len().min(1024)];
    let tail = if bytes.len() > 1024 { &bytes[bytes.len() - (bytes.len() - 1024).min(64)..] } else { &[] };
    Event::Data(Data {
        start_ns: start,
        end_ns: end,
        tgid: TGID,
        tid: TGID + 1,
        fd,
        sock: 0xffff_0000 + fd as u64,
        tuple,
        egress,
        syscall: if egress { Syscall::Write as u8 } else { Syscall::Read as u8 },
        role: Role::Unknown,
        proto: Proto::Http1,
        tls: false,
        ctx: None,
        len: bytes.len() as u32,
        head: Bytes::copy_from_slice(head),
        tail: Bytes::copy_from_slice(tail),
    })
}

struct Sim {
    asm: Assembler,
    spans: Vec<SpanRecord>,
    tuple: ConnTuple,
}

impl Sim {
    fn new() -> Self {
        Self { asm: Assembler::new(Clock::fixed(UNIX_EPOCH)), spans: Vec::new(), tuple: v4_tuple() }
    }
    fn ev(&mut self, ev: Event) {
        self.asm.on_event(&ev, &mut self.spans);
    }
    /// The traced process reads `bytes` during [start, end].
    fn read(&mut self, start: u64, end: u64, bytes: &[u8]) {
        self.ev(data_on(FD, self.tuple, false, start, end, bytes));
    }
    /// The traced process writes `bytes` during [start, end].
    fn write(&mut self, start: u64, end: u64, bytes: &[u8]) {
        self.ev(data_on(FD, self.tuple, true, start, end, bytes));
    }
    fn close(&mut self, at: u64) {
        self.ev(Event::Close { ts_ns: at, tgid: TGID, tid: TGID, fd: FD });
    }
    fn take(&mut self) -> Vec<SpanRecord> {
        std::mem::take(&mut self.spans)
    }
}

fn ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}
fn times(s: &SpanRecord) -> (u64, u64) {
    (ns(s.start), ns(s.end))
}
fn str_attr<'a>(s: &'a SpanRecord, key: &str) -> Option<&'a str> {
    match s.attr(key) {
        Some(AttrValue::Str(v)) => Some(v),
        _ => None,
    }
}
fn int_attr(s: &SpanRecord, key: &str) -> Option<i64> {
    match s.attr(key) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    }
}

#[test]
fn server_headers_split_over_three_reads() {
    let mut sim = Sim::new();
    sim.read(100, 110, b"GET /users/1?token=secret HT");
    sim.read(120, 130, b"TP/1.1\r\nHost: api.example.com\r\nAccept: */*");
    sim.read(140, 150, b"\r\n\r\n");
    assert!(sim.spans.is_empty());
    sim.write(200, 210, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "GET");
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(times(s), (110, 200));
    assert_eq!(s.pid, TGID);
    assert_eq!(s.status, SpanStatus::Unset);
    assert_eq!(s.parent_span_id, None);
    assert_eq!(str_attr(s, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(s, "url.path"), Some("/users/1"));
    assert_eq!(str_attr(s, "url.scheme"), Some("http"));
    assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(s, "network.protocol.version"), Some("1.1"));
    assert_eq!(str_attr(s, "server.address"), Some("api.example.com"));
    assert_eq!(int_attr(s, "server.port"), Some(8080));
    assert_eq!(str_attr(s, "client.address"), Some("10.0.0.2"));
    assert_eq!(int_attr(s, "client.port"), Some(51000));
    assert_eq!(str_attr(s, "network.peer.address"), Some("10.0.0.2"));
    assert_eq!(int_attr(s, "network.peer.port"), Some(51000));
    assert_eq!(int_attr(s, "http.response.body.size"), Some(2));
    assert_eq!(s.attr("http.request.body.size"), None);
    let exported = format!("{:?}", s.attributes);
    assert!(!exported.contains("secret") && !exported.contains("Accept"), "{exported}");
    assert_eq!(sim.asm.stats().spans_emitted, 1);
    assert_eq!(sim.asm.stats().connections, 1);
}

#[test]
fn keep_alive_three_exchanges() {
    let mut sim = Sim::new();
    for i in 0..3u64 {
        let t = 1000 * i;
        sim.read(t, t + 10, format!("GET /item/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        sim.write(t + 50, t + 60, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert!(sim.spans.len() as u64 == i, "body still pending");
        sim.write(t + 70, t + 80, b"hello");
    }
    let spans = sim.take();
    assert_eq!(spans.len(), 3);
    for (i, s) in spans.iter().enumerate() {
        let t = 1000 * i as u64;
        assert_eq!(times(s), (t + 10, t + 70));
        assert_eq!(str_attr(s, "url.path"), Some(format!("/item/{i}").as_str()));
    }
    sim.close(5000);
    assert_eq!(sim.asm.stats().unanswered_requests, 0);
    assert_eq!(sim.asm.stats().connections, 0);
}

#[test]
fn pipelined_requests_and_responses() {
    let mut sim = Sim::new();
    sim.read(
        10,
        20,
        b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzDELETE /c?x=1 HTTP/1.1\r\n\r\n",
    );
    sim.write(
        30,
        40,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
    );
    let spans = sim.take();
    let got: Vec<_> = spans
        .iter()
        .map(|s| (s.name.as_str(), str_attr(s, "url.path"), int_attr(s, "http.response.status_code"), times(s)))
        .collect();
    assert_eq!(
        got,
        [
            ("GET", Some("/a"), Some(200), (20, 30)),
            ("POST", Some("/b"), Some(201), (20, 30)),
            ("DELETE", Some("/c"), Some(503), (20, 30)),
        ]
    );
    assert_eq!(int_attr(&spans[1], "http.request.body.size"), Some(3));
    assert_eq!(spans[2].status, SpanStatus::Error("HTTP 503".into()));
}

#[test]
fn tls_plaintext_gives_https() {
    // Client: the scheme in `url.full`, the default port 443 left out.
    let mut sim = Sim::new();
    sim.tuple.sport = 51000;
    sim.tuple.dport = 443;
    let tls = |ev: Event| match ev {
        Event::Data(d) => Event::Data(Data { tls: true, ..d }),
        ev => ev,
    };
    let (t, fd) = (sim.tuple, FD);
    sim.ev(tls(data_on(fd, t, true, 100, 105, b"GET /feed HTTP/1.1\r\nHost: news.example\r\n\r\n")));
    sim.ev(tls(data_on(fd, t, false, 200, 300, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")));
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(str_attr(&spans[0], "url.full"), Some("https://news.example/feed"));
    // Server: `url.scheme`.
    let mut sim = Sim::new();
    let (t, fd) = (sim.tuple, FD);
    sim.ev(tls(data_on(fd, t, false, 100, 105, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")));
    sim.ev(tls(data_on(fd, t, true, 200, 300, b"HTTP/1.1 204 No Content\r\n\r\n")));
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, SpanKind::Server);
    assert_eq!(str_attr(&spans[0], "url.scheme"), Some("https"));
}

#[test]
fn client_chunked_response() {
    let mut sim = Sim::new();
    sim.tuple.sport = 51000;
    sim.tuple.dport = 80;
    sim.write(100, 105, b"GET /feed?page=2 HTTP/1.1\r\nHost: news.example\r\n\r\n");
    sim.read(200, 300, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(times(s), (100, 300));
    assert_eq!(str_attr(s, "server.address"), Some("news.example"));
    assert_eq!(int_attr(s, "server.port"), Some(80));
    assert_eq!(str_attr(s, "url.full"), Some("http://news.example/feed"));
    assert_eq!(str_attr(s, "network.peer.address"), Some("10.0.0.2"));
    assert_eq!(int_attr(s, "network.peer.port"), Some(80));
    assert_eq!(s.attr("client.address"), None);
    assert_eq!(s.attr("url.scheme"), None);
    assert_eq!(int_attr(s, "http.response.body.size"), Some(14));
}

/// Go's client writes a request on its `writeLoop` goroutine and reads the response on
/// `readLoop`, on another thread: the writer can be preempted after its bytes left and before
/// its syscall's exit is recorded, so the response's read can reach the agent first.
#[test]
fn client_response_seen_before_its_request_write() {
    let mut sim = Sim::new();
    sim.tuple.sport = 51000;
    sim.tuple.dport = 80;
    sim.write(100, 110, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.read(120, 130, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    // The second exchange's events arrive response first, its body in a second read.
    sim.read(220, 230, b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nno");
    sim.read(232, 234, b"pe");
    sim.write(200, 240, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
    // The third, in order again.
    sim.write(300, 310, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.read(320, 330, b"HTTP/1.1 204 No Content\r\n\r\n");
    let spans = sim.take();
    let got: Vec<_> =
        spans.iter().map(|s| (str_attr(s, "url.path"), int_attr(s, "http.response.status_code"), times(s))).collect();
    assert_eq!(
        got,
        [(Some("/a"), Some(200), (100, 130)), (Some("/b"), Some(404), (200, 234)), (Some("/c"), Some(204), (300, 330))]
    );
    assert_eq!(sim.asm.stats().unmatched_responses, 0);
}

/// A response that no request seen can have caused (its read ended before the next request's
/// write began) is not matched to that request.
#[test]
fn client_stray_response_is_not_matched_to_a_later_request() {
    let mut sim = Sim::new();
    sim.write(100, 110, b"GET /a HTTP/1.1\r\n\r\n");
    sim.read(120, 130, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    sim.read(140, 150, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
    sim.write(200, 210, b"GET /b HTTP/1.1\r\n\r\n");
    sim.read(220, 230, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = sim
        .take()
        .iter()
        .map(|s| (str_attr(s, "url.path").map(String::from), int_attr(s, "http.response.status_code")))
        .collect();
    assert_eq!(got, [(Some("/a".into()), Some(200)), (Some("/b".into()), Some(201))]);
    assert_eq!(sim.asm.stats().unmatched_responses, 1);
}

#[test]
fn client_chunked_split_across_reads() {
    let mut sim = Sim::new();
    sim.write(100, 105, b"GET / HTTP/1.1\r\n\r\n");
    sim.read(200, 210, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r");
    sim.read(220, 230, b"\nabcd\r\n1");
    sim.read(240, 250, b"0\r\n0123456789abcdef\r\n0\r");
    assert!(sim.spans.is_empty());
    sim.read(260, 270, b"\n\r\n");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(times(&spans[0]), (100, 270));
    // No Host header: the remote address is the server.
    assert_eq!(str_attr(&spans[0], "server.address"), Some("10.0.0.2"));
    assert_eq!(int_attr(&spans[0], "server.port"), Some(51000));
    assert_eq!(str_attr(&spans[0], "url.full"), Some("http://10.0.0.2:51000/"));
}

fn megabyte_client(body: Vec<u8>, head: &[u8], read_size: usize) -> Vec<SpanRecord> {
    let mut sim = Sim::new();
    sim.write(1, 2, b"GET /big HTTP/1.1\r\nHost: files\r\n\r\n");
    let mut msg = head.to_vec();
    msg.extend_from_slice(&body);
    let mut t = 10;
    for chunk in msg.chunks(read_size) {
        sim.read(t, t + 5, chunk);
        t += 10;
    }
    assert_eq!(sim.asm.stats().parse_errors, 0);
    sim.take()
}

#[test]
fn megabyte_content_length_in_64k_reads() {
    let spans = megabyte_client(vec![b'x'; 1 << 20], b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n", 64 * 1024);
    assert_eq!(spans.len(), 1);
    // 17 reads: the last carries the final bytes of the body.
    assert_eq!(times(&spans[0]), (1, 16 * 10 + 10 + 5));
    assert_eq!(int_attr(&spans[0], "http.response.body.size"), Some(1 << 20));
}

#[test]
fn megabyte_chunked_with_chunk_headers_in_gaps() {
    let mut body = Vec::new();
    for _ in 0..128 {
        body.extend_from_slice(b"2000\r\n");
        body.resize(body.len() + 0x2000, b'y');
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let body_len = body.len() as i64;
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let total = head.len() + body.len();
    let reads = total.div_ceil(60_000) as u64;
    let spans = megabyte_client(body, head, 60_000);
    assert_eq!(spans.len(), 1);
    assert_eq!(times(&spans[0]), (1, 10 * reads + 5));
    assert_eq!(int_attr(&spans[0], "http.response.body.size"), Some(body_len));
}

#[test]
fn head_and_no_body_responses() {
    let mut sim = Sim::new();
    sim.read(10, 11, b"HEAD /h HTTP/1.1\r\n\r\n");
    sim.write(20, 21, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
    sim.read(30, 31, b"DELETE /d HTTP/1.1\r\n\r\n");
    sim.write(40, 41, b"HTTP/1.1 204 No Content\r\n\r\n");
    sim.read(50, 51, b"GET /c HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n");
    sim.write(60, 61, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
    sim.read(70, 71, b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    sim.write(80, 81, b"HTTP/1.1 100 Continue\r\n\r\n");
    sim.read(90, 91, b"hi");
    sim.write(100, 101, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let spans = sim.take();
    let got: Vec<_> =
        spans.iter().map(|s| (s.name.as_str(), int_attr(s, "http.response.status_code"), times(s))).collect();
    assert_eq!(
        got,
        [
            ("HEAD", Some(200), (11, 20)),
            ("DELETE", Some(204), (31, 40)),
            ("GET", Some(304), (51, 60)),
            ("POST", Some(200), (71, 100)),
        ]
    );
    assert_eq!(spans[0].attr("http.response.body.size"), None);
    assert_eq!(int_attr(&spans[3], "http.request.body.size"), Some(2));
    assert_eq!(sim.asm.stats().parse_errors, 0);
    assert_eq!(sim.asm.stats().unmatched_responses, 0);
}

#[test]
fn status_rules_by_kind() {
    let exchange = |egress_request: bool, status: u16| {
        let mut sim = Sim::new();
        let req = b"GET /x HTTP/1.1\r\n\r\n";
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        if egress_request {
            sim.write(1, 2, req);
            sim.read(3, 4, resp.as_bytes());
        } else {
            sim.read(1, 2, req);
            sim.write(3, 4, resp.as_bytes());
        }
        let mut spans = sim.take();
        assert_eq!(spans.len(), 1);
        spans.remove(0)
    };
    let server_404 = exchange(false, 404);
    assert_eq!(server_404.status, SpanStatus::Unset);
    assert_eq!(server_404.attr("error.type"), None);
    let server_503 = exchange(false, 503);
    assert_eq!(server_503.status, SpanStatus::Error("HTTP 503".into()));
    assert_eq!(str_attr(&server_503, "error.type"), Some("503"));
    assert_eq!(exchange(true, 404).status, SpanStatus::Error("HTTP 404".into()));
    assert_eq!(exchange(true, 500).status, SpanStatus::Error("HTTP 500".into()));
    assert_eq!(exchange(true, 302).status, SpanStatus::Unset);
    assert_eq!(exchange(false, 200).status, SpanStatus::Unset);
}

#[test]
fn unknown_method_and_http10() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"PROPFIND /dav?depth=1 HTTP/1.0\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.0 207 Multi\r\n\r\n<xml/>");
    sim.close(9);
    let spans = sim.take();
    assert_eq!(spans.len(), 1, "read-until-close response completed by close");
    let s = &spans[0];
    assert_eq!(s.name, "HTTP");
    assert_eq!(str_attr(s, "http.request.method"), Some("_OTHER"));
    assert_eq!(str_attr(s, "http.request.method_original"), Some("PROPFIND"));
    assert_eq!(str_attr(s, "url.path"), Some("/dav"));
    assert_eq!(str_attr(s, "network.protocol.version"), Some("1.0"));
    assert_eq!(int_attr(s, "http.response.body.size"), Some(6));
    assert_eq!(times(s), (2, 3));
}

#[test]
fn request_then_close_is_dropped_and_counted() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET /never HTTP/1.1\r\n\r\n");
    sim.close(10);
    assert!(sim.take().is_empty());
    let st = sim.asm.stats();
    assert_eq!((st.unanswered_requests, st.spans_emitted, st.connections), (1, 0, 0));
    // A response cut short by close is not a span either.
    sim.read(11, 12, b"GET /short HTTP/1.1\r\n\r\n");
    sim.write(13, 14, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part");
    sim.close(20);
    assert!(sim.take().is_empty());
    assert_eq!(sim.asm.stats().unanswered_requests, 2);
}

#[test]
fn garbage_never_panics_and_yields_nothing() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut sim = Sim::new();
    for i in 0..3000u64 {
        let n = rng.random_range(0..3000usize);
        let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        let fd = rng.random_range(0..4);
        sim.ev(data_on(fd, v4_tuple(), rng.random_bool(0.5), i, i + 1, &bytes));
        match rng.random_range(0..50) {
            0 => sim.ev(Event::Close { ts_ns: i, tgid: TGID, tid: TGID, fd }),
            1 => sim.ev(Event::Conn {
                ts_ns: i,
                tgid: TGID,
                tid: TGID,
                fd,
                role: random_role(&mut rng),
                start_ns: i,
                ret: 0,
            }),
            2 => sim.asm.on_tick(i + rng.random_range(0..1_000_000_000_000), &mut sim.spans),
            _ => {}
        }
    }
    sim.asm.flush(&mut sim.spans);
    assert!(sim.spans.is_empty());
    assert!(sim.asm.stats().parse_errors > 0);
    // Lying event: len smaller than what was captured.
    let mut ev = data_on(FD, v4_tuple(), false, 1, 2, b"GET / HTTP/1.1\r\n\r\n");
    if let Event::Data(d) = &mut ev {
        d.len = 3;
        d.tail = Bytes::from_static(b"0123456789");
    }
    sim.ev(ev);
}

#[test]
fn mutated_http_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let msgs: [&[u8]; 4] = [
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    let mut sim = Sim::new();
    for i in 0..2000u64 {
        let mut m = msgs[rng.random_range(0..msgs.len())].to_vec();
        if rng.random_bool(0.5) && !m.is_empty() {
            let at = rng.random_range(0..m.len());
            m[at] = rng.random();
        }
        if rng.random_bool(0.2) {
            m.truncate(rng.random_range(0..=m.len()));
        }
        sim.ev(data_on(FD, v4_tuple(), rng.random_bool(0.5), i, i + 1, &m));
        if rng.random_bool(0.05) {
            sim.close(i);
        }
    }
    sim.asm.flush(&mut sim.spans);
    for s in &sim.spans {
        assert!(s.start <= s.end);
    }
}

#[test]
fn ipv6_and_mapped_addresses() {
    let mut sim = Sim::new();
    sim.tuple = ConnTuple { family: AF_INET6, sport: 443, dport: 40000, ..Default::default() };
    sim.tuple.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
    sim.tuple.daddr = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
    sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!(str_attr(s, "server.address"), Some("2001:db8::1"));
    assert_eq!(int_attr(s, "server.port"), Some(443));
    assert_eq!(str_attr(s, "client.address"), Some("fe80::2"));
    assert_eq!(int_attr(s, "client.port"), Some(40000));

    let mut sim = Sim::new();
    sim.tuple = ConnTuple { family: AF_INET6, sport: 40000, dport: 8080, ..Default::default() };
    sim.tuple.daddr = "::ffff:192.168.1.9".parse::<Ipv6Addr>().unwrap().octets();
    sim.write(1, 2, b"GET /p HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n");
    sim.read(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!(str_attr(s, "network.peer.address"), Some("192.168.1.9"));
    assert_eq!(str_attr(s, "server.address"), Some("::1"));
    assert_eq!(int_attr(s, "server.port"), Some(9000));
    assert_eq!(str_attr(s, "url.full"), Some("http://[::1]:9000/p"));

    // Unknown family: no address attributes at all.
    let mut sim = Sim::new();
    sim.tuple = ConnTuple::default();
    sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert!(s.attributes.iter().all(|a| !a.key.contains("address") && !a.key.contains("port")));
}

#[test]
fn traceparent_makes_remote_parent() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    let in_flight: Vec<_> = sim.asm.in_flight();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(traceparent_parent(&in_flight[0]).as_deref(), Some("00f067aa0ba902b7"));
    sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
    assert!(s.parent_is_remote);
    assert_eq!(s.span_id, in_flight[0].span_id, "ids are fixed when the request is seen");
    assert!(s.attr("traceparent").is_none());

    // A client span joins the trace of an instrumented caller in the same process: the
    // header's span is its (local) parent. Invalid headers are ignored.
    let mut sim = Sim::new();
    sim.write(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    sim.read(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
    assert!(!s.parent_is_remote);
    assert_ne!(s.span_id.to_string(), "00f067aa0ba902b7");
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET / HTTP/1.1\r\ntraceparent: 00-zz-00f067aa0ba902b7-01\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(sim.take()[0].parent_span_id, None);
}

#[test]
fn timeouts_expire_and_evict() {
    let cfg = AssemblerConfig::default();
    let mut sim = Sim::new();
    // A chunked response desynced in a gap with no visible terminator.
    sim.write(1, 2, b"GET / HTTP/1.1\r\n\r\n");
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
    resp.resize(100_000, b'z');
    sim.read(10, 20, &resp);
    sim.asm.on_tick(20 + cfg.desync_timeout_ns - 1, &mut sim.spans);
    assert!(sim.spans.is_empty());
    sim.asm.on_tick(20 + cfg.desync_timeout_ns, &mut sim.spans);
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(times(&spans[0]), (1, 20));

    // A request nobody answers expires; the idle connection is then evicted.
    sim.write(100, 110, b"GET /slow HTTP/1.1\r\n\r\n");
    sim.asm.on_tick(110 + cfg.exchange_timeout_ns, &mut sim.spans);
    assert_eq!(sim.asm.stats().expired_requests, 1);
    assert_eq!(sim.asm.stats().connections, 1);
    sim.asm.on_tick(110 + cfg.idle_timeout_ns, &mut sim.spans);
    let st = sim.asm.stats();
    assert_eq!((st.evictions, st.connections), (1, 0));
    assert!(sim.spans.is_empty());
}

#[test]
fn capacity_evicts_least_recently_active() {
    let cfg = AssemblerConfig { max_connections: 2, ..Default::default() };
    let mut asm = Assembler::with_config(Clock::fixed(UNIX_EPOCH), cfg);
    let mut out = Vec::new();
    for fd in 0..3 {
        let t = 100 * fd as u64;
        asm.on_event(&data_on(fd, v4_tuple(), false, t, t + 1, b"GET / HTTP/1.1\r\n\r\n"), &mut out);
    }
    let st = asm.stats();
    assert_eq!((st.evictions, st.connections, st.expired_requests), (1, 2, 1));
    asm.on_event(&data_on(0, v4_tuple(), true, 400, 401, b"HTTP/1.1 200 OK\r\n\r\n"), &mut out);
    assert!(out.is_empty(), "fd 0 was evicted; its response is unmatched");
    asm.on_event(&data_on(2, v4_tuple(), true, 500, 501, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn conn_event_and_socket_change_reset_state() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET /old HTTP/1.1\r\n\r\n");
    sim.ev(Event::Conn { ts_ns: 5, tgid: TGID, tid: TGID, fd: FD, role: Role::Client, start_ns: 5, ret: 0 });
    assert_eq!(sim.asm.stats().unanswered_requests, 1);
    // Now the process is the client on this fd.
    sim.write(10, 11, b"GET /new HTTP/1.1\r\n\r\n");
    sim.read(12, 13, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, SpanKind::Client);

    // Same fd, another socket: the missed close is inferred.
    sim.write(20, 21, b"GET /lost HTTP/1.1\r\n\r\n");
    if let Event::Data(mut d) = data_on(FD, sim.tuple, false, 30, 31, b"HTTP/1.1 200 OK\r\n\r\n") {
        d.sock += 1;
        sim.ev(Event::Data(d));
    }
    assert!(sim.take().is_empty());
    assert_eq!(sim.asm.stats().unanswered_requests, 2);
}

#[test]
fn exit_closes_connections_of_the_process() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET / HTTP/1.1\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    sim.ev(Event::Exit { ts_ns: 9, tgid: TGID + 1 });
    assert!(sim.spans.is_empty());
    sim.ev(Event::Exit { ts_ns: 10, tgid: TGID });
    assert_eq!(sim.take().len(), 1);
    assert_eq!(sim.asm.stats().connections, 0);
}

#[test]
fn lost_response_clears_head_hint() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"HEAD /h HTTP/1.1\r\n\r\n");
    // The response stream shows garbage: the HEAD response is lost, the request dropped.
    sim.write(3, 4, b"\x00\x01garbage");
    assert_eq!(sim.asm.stats().unanswered_requests, 1);
    // The next GET's response has a body; it must not be framed as a HEAD response.
    sim.read(5, 6, b"GET /g HTTP/1.1\r\n\r\n");
    sim.write(7, 8, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
    assert!(sim.spans.is_empty());
    sim.write(9, 10, b"abc");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(times(&spans[0]), (6, 9));
    // An empty read (end of stream) is not an error.
    sim.read(11, 12, b"");
    assert_eq!(sim.asm.stats().parse_errors, 1);
}

#[test]
fn flush_emits_complete_and_drops_the_rest() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET /waiting HTTP/1.1\r\n\r\n");
    sim.asm.flush(&mut sim.spans);
    assert!(sim.spans.is_empty());
    let st = sim.asm.stats();
    assert_eq!((st.unanswered_requests, st.connections), (1, 0));
}

#[test]
fn upgrade_stops_parsing() {
    let mut sim = Sim::new();
    sim.read(1, 2, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    sim.write(3, 4, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    sim.read(5, 6, b"\x81\x85binary frame");
    sim.write(7, 8, b"\x81\x05hello");
    let spans = sim.take();
    assert_eq!(spans.len(), 1);
    assert_eq!(int_attr(&spans[0], "http.response.status_code"), Some(101));
    assert_eq!(sim.asm.stats().parse_errors, 0);
}

#[test]
fn exchange_keeps_correlation_fields() {
    let mut asm = Assembler::new(Clock::fixed(UNIX_EPOCH + Duration::from_secs(1)));
    let mut exs = Vec::new();
    asm.on_event_exchanges(&data_on(FD, v4_tuple(), false, 10, 20, b"GET / HTTP/1.1\r\n\r\n"), &mut exs);
    asm.on_event_exchanges(
        &data_on(FD, v4_tuple(), true, 30, 40, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        &mut exs,
    );
    assert_eq!(exs.len(), 1);
    let ex = &mut exs[0];
    assert_eq!((ex.sock, ex.fd, ex.tgid, ex.request_first.tid), (0xffff_0000 + FD as u64, FD, TGID, TGID + 1));
    assert_eq!(ex.request_first, Stamp { start_ns: 10, end_ns: 20, tid: TGID + 1 });
    assert_eq!(ex.response_last.map(|s| s.end_ns), Some(40));
    let parent = SpanId([1; 8]);
    ex.parent_span_id = Some(parent);
    let span = crate::spans::to_span(ex, asm.clock(), true);
    assert_eq!(span.parent_span_id, Some(parent));
    assert_eq!(span.start, UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(20));
}

fn with_ctx(mut ev: Event, ctx: KernelCtx) -> Event {
    if let Event::Data(d) = &mut ev {
        d.ctx = Some(ctx);
    }
    ev
}

fn kctx(trace: u8, span: u8, parent: Option<u8>, remote: bool, thread: bool) -> KernelCtx {
    KernelCtx {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_id: parent.map(|p| [p; 8]),
        remote_parent: remote,
        thread_parent: thread,
    }
}

#[test]
fn kernel_ctx_on_the_read_completing_a_split_request_start() {
    // Go's server reads the first byte of the next request apart (background read); the
    // kernel gives the ids to the read that completes the request's first four bytes.
    let mut sim = Sim::new();
    sim.read(1, 2, b"G");
    let ctx = kctx(0xaa, 0x11, None, false, false);
    sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 3, 4, b"ET /a HTTP/1.1\r\n\r\n"), ctx));
    sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!((s.trace_id, s.span_id), (TraceId([0xaa; 16]), SpanId([0x11; 8])));
    // A context from before the request started is not taken.
    let mut sim = Sim::new();
    sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 1, 2, b"xy"), ctx));
    sim.read(3, 4, b"GET /b HTTP/1.1\r\n\r\n");
    sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_ne!(sim.take()[0].span_id, SpanId([0x11; 8]));
}

#[test]
fn kernel_ctx_sets_ids() {
    // Server request with a remote parent from a TCP option, headers split over two reads:
    // the ids come from the event that carried the first byte.
    let mut sim = Sim::new();
    let ctx = kctx(0xaa, 0x11, Some(0x22), true, false);
    sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 1, 2, b"GET /a HTTP/1.1\r\n"), ctx));
    sim.read(3, 4, b"Host: x\r\n\r\n");
    let in_flight: Vec<_> = sim.asm.in_flight();
    assert_eq!(in_flight[0].kernel_ctx, Some(ctx));
    assert_eq!(in_flight[0].parent_source, ParentSource::KernelRemote);
    sim.write(5, 6, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!((s.trace_id, s.span_id), (TraceId([0xaa; 16]), SpanId([0x11; 8])));
    assert_eq!((s.parent_span_id, s.parent_is_remote), (Some(SpanId([0x22; 8])), true));

    // Client request on a thread handling a server request: thread parent, local.
    let mut sim = Sim::new();
    let ctx = kctx(0xbb, 0x33, Some(0x44), false, true);
    sim.ev(with_ctx(data_on(FD, v4_tuple(), true, 1, 2, b"GET /b HTTP/1.1\r\n\r\n"), ctx));
    sim.read(3, 4, b"HTTP/1.1 204 No Content\r\n\r\n");
    let s = &sim.take()[0];
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!((s.trace_id, s.span_id), (TraceId([0xbb; 16]), SpanId([0x33; 8])));
    assert_eq!((s.parent_span_id, s.parent_is_remote), (Some(SpanId([0x44; 8])), false));

    // No parent: a root with the kernel's ids. Pipelined requests in the same read: only
    // the first takes the kernel's ids.
    let mut sim = Sim::new();
    let ctx = kctx(0xcc, 0x55, None, false, false);
    sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 1, 2, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"), ctx));
    sim.write(3, 4, b"HTTP/1.1 204 A\r\n\r\nHTTP/1.1 204 B\r\n\r\n");
    let spans = sim.take();
    assert_eq!(spans.len(), 2);
    assert_eq!((spans[0].trace_id, spans[0].span_id), (TraceId([0xcc; 16]), SpanId([0x55; 8])));
    assert_eq!(spans[0].parent_span_id, None);
    assert_ne!(spans[1].span_id, SpanId([0x55; 8]));
    assert_ne!(spans[1].trace_id, TraceId([0xcc; 16]));

    // A context on an event that starts no request (a body) is not used by a later head.
    let mut sim = Sim::new();
    sim.read(1, 2, b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
    sim.ev(with_ctx(data_on(FD, v4_tuple(), false, 3, 4, b"abc"), ctx));
    sim.write(5, 6, b"HTTP/1.1 204 A\r\n\r\n");
    sim.read(7, 8, b"GET /q HTTP/1.1\r\n\r\n");
    sim.write(9, 10, b"HTTP/1.1 204 A\r\n\r\n");
    assert!(sim.take().iter().all(|s| s.span_id != SpanId([0x55; 8])));
}

#[test]
fn traceparent_wins_over_kernel_ctx() {
    let tp = b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    for egress in [false, true] {
        let mut sim = Sim::new();
        let ctx = kctx(0xaa, 0x11, Some(0x22), !egress, egress);
        sim.ev(with_ctx(data_on(FD, v4_tuple(), egress, 1, 2, tp), ctx));
        sim.ev(data_on(FD, v4_tuple(), !egress, 3, 4, b"HTTP/1.1 204 A\r\n\r\n"));
        let s = &sim.take()[0];
        assert_eq!(s.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.span_id, SpanId([0x11; 8]), "the span id stays the kernel's");
        assert_eq!(s.parent_span_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(s.parent_is_remote, !egress);
    }
}
