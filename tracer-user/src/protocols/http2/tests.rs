use loona_hpack::Encoder;
use tracer_common::{H2_PREFACE, MAX_PAYLOAD, Proto};

use super::Http2;
use super::frames::{self, FrameHeader, Walker, plausible};
use crate::model::{SpanKind, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr};
use crate::protocols::exchange::{Detail, Pairing, Stamp};
use crate::protocols::protocol::Protocol;
use crate::streams::EndReason;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = len.to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn settings() -> Vec<u8> {
    frame(frames::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
}

/// An encoder per direction, as a peer keeps one per connection.
struct Peer {
    enc: Encoder<'static>,
}

impl Peer {
    fn new() -> Self {
        Self { enc: Encoder::new() }
    }

    fn headers(&mut self, stream: u32, end_stream: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let block = self.enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let flags = frames::END_HEADERS | if end_stream { frames::END_STREAM } else { 0 };
        frame(frames::HEADERS, flags, stream, &block)
    }
}

fn data(stream: u32, end_stream: bool, len: usize) -> Vec<u8> {
    frame(frames::DATA, if end_stream { frames::END_STREAM } else { 0 }, stream, &vec![0x61; len])
}

fn client() -> Conn<Http2> {
    Conn::new(Http2::new(), Proto::Http2)
}

fn get(peer: &mut Peer, stream: u32, path: &str) -> Vec<u8> {
    peer.headers(
        stream,
        true,
        &[(":method", "GET"), (":scheme", "http"), (":authority", "svc:8080"), (":path", path), ("user-agent", "t")],
    )
}

fn ok(peer: &mut Peer, stream: u32, status: &str, body: usize) -> Vec<u8> {
    let mut v = peer.headers(stream, body == 0, &[(":status", status), ("content-type", "text/plain")]);
    if body > 0 {
        v.extend(data(stream, true, body));
    }
    v
}

#[test]
fn plain_requests_on_one_connection_pair_by_stream() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    first.extend(get(&mut req, 1, "/a?secret=1"));
    c.write(&first);
    c.read(&settings());
    // Two streams in flight, answered out of order.
    c.write(&get(&mut req, 3, "/b"));
    c.read(&ok(&mut resp, 3, "404", 0));
    assert_eq!(c.in_flight(), 1);
    c.read(&ok(&mut resp, 1, "200", 5));
    assert_eq!(c.in_flight(), 0);
    let pairing: Vec<_> = c.out.iter().map(|e| e.pairing).collect();
    assert_eq!(pairing, [Pairing::ByStream(3), Pairing::ByStream(1)]);
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    let (b, a) = (&spans[0], &spans[1]);
    assert_eq!((a.name.as_str(), a.kind), ("GET", SpanKind::Client));
    assert_eq!(attr(a, "url.path").as_deref(), Some("/a"), "no query string");
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "http.response.body.size").as_deref(), Some("5"));
    assert_eq!(attr(a, "network.protocol.version").as_deref(), Some("2"));
    assert_eq!(attr(a, "server.address").as_deref(), Some("svc"));
    assert_eq!(attr(a, "server.port").as_deref(), Some("8080"));
    assert_eq!(attr(a, "tracer.http2.missing"), None);
    assert_eq!(attr(b, "url.path").as_deref(), Some("/b"));
    assert_eq!(b.status, SpanStatus::Error("HTTP 404".into()), "a client's 4xx");
    assert_eq!(c.stats.spans_emitted, 2);
}

#[test]
fn server_side_reads_the_preface_and_the_dynamic_table_carries_over() {
    let mut c = client();
    c.info.hint = tracer_common::Role::Server;
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    first.extend(get(&mut req, 1, "/x"));
    c.read(&first);
    c.write(&ok(&mut resp, 1, "200", 0));
    // The second request's fields are indexed in the dynamic table (authority, user-agent).
    c.read(&get(&mut req, 3, "/y"));
    c.write(&ok(&mut resp, 3, "500", 0));
    let spans = c.spans();
    let paths: Vec<_> = spans.iter().map(|s| (s.kind, attr(s, "url.path"), attr(s, "server.address"))).collect();
    assert_eq!(
        paths,
        [
            (SpanKind::Server, Some("/x".into()), Some("svc".into())),
            (SpanKind::Server, Some("/y".into()), Some("svc".into()))
        ]
    );
    assert_eq!(spans[1].status, SpanStatus::Error("HTTP 500".into()));
    assert_eq!(attr(&spans[0], "url.scheme").as_deref(), Some("http"));
}

fn grpc_request(peer: &mut Peer, stream: u32, method: &str) -> Vec<u8> {
    peer.headers(
        stream,
        false,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
}

fn grpc_message(stream: u32, end_stream: bool) -> Vec<u8> {
    frame(frames::DATA, if end_stream { frames::END_STREAM } else { 0 }, stream, &[0, 0, 0, 0, 2, 8, 1])
}

#[test]
fn grpc_status_from_trailers_and_trailers_only() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    first.extend(grpc_request(&mut req, 1, "/demo.Echo/Say"));
    first.extend(grpc_message(1, true));
    c.write(&first);
    let mut r = resp.headers(1, false, &[(":status", "200"), ("content-type", "application/grpc")]);
    r.extend(grpc_message(1, false));
    r.extend(resp.headers(1, true, &[("grpc-status", "0"), ("grpc-message", "")]));
    c.read(&r);
    // A trailers-only error response.
    let mut w = grpc_request(&mut req, 3, "/demo.Echo/Fail");
    w.extend(grpc_message(3, true));
    c.write(&w);
    c.read(&resp.headers(
        3,
        true,
        &[(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"), ("grpc-message", "no such")],
    ));
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].name, "demo.Echo/Say");
    assert_eq!(attr(&spans[0], "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(&spans[0], "rpc.service").as_deref(), Some("demo.Echo"));
    assert_eq!(attr(&spans[0], "rpc.method").as_deref(), Some("Say"));
    assert_eq!(attr(&spans[0], "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(spans[0].status, SpanStatus::Unset);
    assert_eq!(attr(&spans[1], "rpc.grpc.status_code").as_deref(), Some("5"));
    assert_eq!(spans[1].status, SpanStatus::Error("NOT_FOUND".into()));
    assert!(spans.iter().all(|s| !format!("{:?}", s.attributes).contains("no such")), "message text");
}

#[test]
fn reset_ends_a_stream() {
    let mut c = client();
    let (mut req, _) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(grpc_request(&mut req, 1, "/demo.Echo/Chat"));
    c.write(&first);
    c.write(&frame(frames::RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "http2.reset").as_deref(), Some("CANCEL"));
    assert_eq!(spans[0].status, SpanStatus::Error("RST_STREAM CANCEL".into()));
}

#[test]
fn data_in_a_gap_is_skipped() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(get(&mut req, 1, "/big"));
    c.write(&first);
    // A response far longer than the capture: its DATA frame's payload is in the gap, the next
    // frame (trailers-less END_STREAM DATA) in the captured tail.
    let mut r = resp.headers(1, false, &[(":status", "200")]);
    r.extend(data(1, false, 10_000));
    r.extend(data(1, true, 20));
    assert!(r.len() > MAX_PAYLOAD);
    c.read(&r);
    // The table is still known: the next stream decodes.
    c.write(&get(&mut req, 3, "/next"));
    c.read(&ok(&mut resp, 3, "204", 0));
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(attr(&spans[0], "http.response.body.size").as_deref(), Some("10020"));
    assert_eq!(attr(&spans[1], "http.response.status_code").as_deref(), Some("204"));
    assert_eq!(attr(&spans[1], "tracer.http2.missing"), None);
}

#[test]
fn headers_in_a_gap_leave_the_table_unknown_but_streams_pair() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(get(&mut req, 1, "/a"));
    c.write(&first);
    // One read: stream 1's response, whose DATA payload runs into the gap (its END_STREAM is in
    // the frame header, so it still ends), then stream 3's response HEADERS, whose frame header
    // is in the gap: framing is lost.
    let mut r = resp.headers(1, false, &[(":status", "200")]);
    r.extend(data(1, true, 2_000));
    c.write(&get(&mut req, 3, "/b"));
    r.extend(resp.headers(3, false, &[(":status", "201"), ("x-pad", &"p".repeat(300))]));
    r.extend(data(3, false, 40));
    c.read(&r);
    assert_eq!(c.stats.parse_errors, 1);
    // A later transfer that starts with a frame header finds framing again, with the response
    // table unknown: stream 3 still ends, and its span says what is missing.
    c.read(&ok(&mut resp, 3, "202", 0));
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(attr(&spans[0], "url.path").as_deref(), Some("/a"));
    assert_eq!(attr(&spans[0], "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(&spans[1], "url.path").as_deref(), Some("/b"));
    assert_eq!(attr(&spans[1], "http.response.status_code"), None);
    assert_eq!(attr(&spans[1], "tracer.http2.missing").as_deref(), Some("response headers"));
    // The request table is still known.
    c.write(&get(&mut req, 5, "/c"));
    c.end(EndReason::Closed);
    assert_eq!(c.stats.unanswered_requests, 1);
}

#[test]
fn a_connection_without_preface_waits_for_a_frame_header() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    c.write(b"garbage that is not a frame");
    c.write(&get(&mut req, 5, "/late"));
    c.read(&ok(&mut resp, 5, "200", 0));
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "tracer.http2.missing").as_deref(), Some("request headers, response headers"));
    assert_eq!(spans[0].name, "HTTP");
}

#[test]
fn continuation_and_padding() {
    let mut c = client();
    let mut enc = Encoder::new();
    let block = enc.encode([(&b":method"[..], &b"PUT"[..]), (b":path", b"/c"), (b":scheme", b"http")]);
    let (a, b) = block.split_at(2);
    let mut padded = vec![3u8];
    padded.extend_from_slice(&[0, 0, 0, 0, 16]);
    padded.extend_from_slice(a);
    padded.extend_from_slice(&[0, 0, 0]);
    let mut w = H2_PREFACE.to_vec();
    w.extend(frame(frames::HEADERS, frames::PADDED | frames::PRIORITY_FLAG | frames::END_STREAM, 1, &padded));
    w.extend(frame(frames::CONTINUATION, frames::END_HEADERS, 1, b));
    c.write(&w);
    let mut resp = Peer::new();
    c.read(&ok(&mut resp, 1, "201", 0));
    let spans = c.spans();
    assert_eq!(spans[0].name, "PUT");
    assert_eq!(attr(&spans[0], "url.path").as_deref(), Some("/c"));
}

#[test]
fn frames_split_anywhere() {
    let mut req = Peer::new();
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend(settings());
    bytes.extend(get(&mut req, 1, "/s"));
    bytes.extend(data(1, true, 3));
    for cut in 1..bytes.len() {
        let mut w = Walker::new(true);
        let mut out = Vec::new();
        let s = Stamp::default();
        w.feed(&bytes[..cut], &[], cut as u64, s, &mut out);
        w.feed(&bytes[cut..], &[], (bytes.len() - cut) as u64, s, &mut out);
        assert!(!w.is_lost(), "cut {cut}");
        assert_eq!(out.len(), 2, "cut {cut}: {out:?}");
    }
}

#[test]
fn plausible_frame_headers() {
    let h = |len: u32, kind: u8, flags: u8, stream: u32| {
        let mut b = [0u8; 9];
        b[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        b[3] = kind;
        b[4] = flags;
        b[5..].copy_from_slice(&stream.to_be_bytes());
        b
    };
    assert!(plausible(&h(10, frames::HEADERS, 4, 1)));
    assert!(plausible(&h(0, frames::SETTINGS, 1, 0)));
    assert!(!plausible(&h(10, frames::HEADERS, 4, 0)), "HEADERS on stream 0");
    assert!(!plausible(&h(20_000, frames::DATA, 0, 1)), "longer than the default maximum");
    assert!(!plausible(&h(7, frames::SETTINGS, 0, 0)));
    assert!(!plausible(&h(4, 10, 0, 1)), "unknown type");
    assert!(!plausible(&h(4, frames::DATA, 0, 0x8000_0001)), "reserved bit");
    assert_eq!(FrameHeader::parse(&h(3, 0, 1, 7)), FrameHeader { len: 3, kind: 0, flags: 1, stream: 7 });
}

#[test]
fn exchange_detail_is_http2() {
    let mut c = client();
    let mut req = Peer::new();
    let mut w = H2_PREFACE.to_vec();
    w.extend(get(&mut req, 1, "/"));
    c.write(&w);
    let mut ex = None;
    c.p.for_each_in_flight(&mut |e| ex = Some(e.clone()));
    let ex = ex.unwrap();
    assert!(matches!(ex.detail, Detail::Http2(ref d) if d.stream_id == 1 && d.method.as_deref() == Some("GET")));
    assert_eq!(ex.kernel_ctx, None);
}

#[test]
fn a_response_whose_end_is_lost_ends_with_the_connection() {
    // curl reading a large body in 16 KiB reads: frame headers fall into the reads' gaps.
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut w = H2_PREFACE.to_vec();
    w.extend(get(&mut req, 1, "/bytes/50000"));
    c.write(&w);
    let mut r = resp.headers(1, false, &[(":status", "200")]);
    for i in 0..4 {
        r.extend(data(1, i == 3, 12_500));
    }
    for chunk in r.chunks(16_384) {
        c.read(chunk);
    }
    assert_eq!(c.stats.parse_errors, 1);
    assert_eq!(c.in_flight(), 1, "the end was not seen");
    c.end(EndReason::Closed);
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(&spans[0], "tracer.http2.missing").as_deref(), Some("response end"));
    assert_eq!(c.stats.unanswered_requests, 0);
}

/// grpc-go writes requests on one goroutine and reads responses on another: the response can
/// reach the agent before the request HEADERS that opened its stream.
#[test]
fn a_response_seen_before_its_request_waits_for_it() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    first.extend(get(&mut req, 1, "/a"));
    c.write(&first);
    c.read(&settings());
    c.read(&ok(&mut resp, 1, "200", 3));
    // Stream 3: the response's HEADERS and DATA come first, in two reads.
    let r3 = ok(&mut resp, 3, "503", 4);
    let (h, d) = r3.split_at(r3.len() - 13);
    c.read(h);
    c.read(d);
    assert_eq!(c.stats.unmatched_responses, 0);
    c.write(&get(&mut req, 3, "/b"));
    // Stream 5 in order again, its HPACK state carried over the held block.
    c.write(&get(&mut req, 5, "/c"));
    c.read(&ok(&mut resp, 5, "204", 0));
    let spans = c.spans();
    let got: Vec<_> = spans
        .iter()
        .map(|s| (attr(s, "url.path"), attr(s, "http.response.status_code"), attr(s, "http.response.body.size")))
        .collect();
    let want = |p: &str, st: &str, b: Option<&str>| (Some(p.to_string()), Some(st.to_string()), b.map(String::from));
    assert_eq!(got, [want("/a", "200", Some("3")), want("/b", "503", Some("4")), want("/c", "204", Some("0"))]);
    assert_eq!(c.stats.unmatched_responses, 0);
    assert_eq!(c.in_flight(), 0);
}

/// Responses to streams opened before the agent looked never find their request: they are
/// dropped (and counted) once a later stream opens, and when the connection ends.
#[test]
fn responses_of_streams_never_seen_opened_are_counted_unmatched() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    c.write(&first);
    c.read(&ok(&mut resp, 1, "200", 2));
    c.write(&get(&mut req, 3, "/b"));
    assert_eq!(c.stats.unmatched_responses, 1);
    c.read(&ok(&mut resp, 3, "200", 0));
    c.read(&ok(&mut resp, 7, "200", 0));
    assert_eq!(c.spans().len(), 1);
    c.end(EndReason::Closed);
    assert_eq!(c.stats.unmatched_responses, 2);
}

/// The client's reader thread reports the server's SETTINGS before the client's own preface
/// write is reported (the kernel classifies the connection at that write; the read was already
/// waiting on another CPU): both directions are still at their start and every header block
/// is decoded.
#[test]
fn the_servers_settings_seen_before_the_clients_preface() {
    let mut c = client();
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    c.read(&settings());
    let mut first = H2_PREFACE.to_vec();
    first.extend(settings());
    c.write(&first);
    let mut w = grpc_request(&mut req, 1, "/grpc.health.v1.Health/Check");
    w.extend(grpc_message(1, true));
    c.write(&w);
    c.read(&resp.headers(1, true, &[(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")]));
    c.write(&get(&mut req, 3, "/b"));
    c.read(&ok(&mut resp, 3, "200", 0));
    let spans = c.spans();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(attr(s, "tracer.http2.missing"), None, "{s:?}");
    }
    assert_eq!(spans[0].name, "grpc.health.v1.Health/Check");
    assert_eq!(attr(&spans[1], "url.path").as_deref(), Some("/b"));
}

/// A SETTINGS ACK, or a SETTINGS frame followed by anything but the client's preface, is no
/// connection start: nothing is decoded against a table that may hold unseen entries.
#[test]
fn settings_first_without_the_clients_preface_decodes_nothing() {
    let (mut req, mut resp) = (Peer::new(), Peer::new());
    let mut c = client();
    c.read(&frame(frames::SETTINGS, frames::ACK, 0, &[]));
    c.write(&get(&mut req, 1, "/a"));
    c.read(&ok(&mut resp, 1, "200", 0));
    let mut d = client();
    d.read(&settings());
    d.write(&get(&mut Peer::new(), 1, "/a"));
    d.read(&ok(&mut Peer::new(), 1, "200", 0));
    for s in c.spans().iter().chain(d.spans().iter()) {
        assert_eq!(
            attr(s, "tracer.http2.missing").as_deref().map(|m| m.contains("request headers")),
            Some(true),
            "{s:?}"
        );
    }
}
