//! NATS through the protocol seam: transfers in, spans out.

use tracer_common::Proto;

use super::{Line, Message, Nats, parse};
use crate::model::{SpanKind, SpanRecord, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr};
use crate::streams::EndReason;

const SECRET: &str = "secret-literal-4242";

fn conn() -> Conn<Nats> {
    let mut c = Conn::new(Nats::new(), Proto::Nats);
    c.info.tuple.dport = 4222;
    c
}

fn names(spans: &[SpanRecord]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

fn no_secret(spans: &[SpanRecord]) {
    for s in spans {
        let text = format!("{s:?}");
        assert!(!text.contains(SECRET) && !text.contains("4242") && !text.contains("_INBOX.abc"), "{s:#?}");
    }
}

const INFO: &[u8] = b"INFO {\"server_id\":\"X\",\"version\":\"2.9.10\",\"max_payload\":1048576}\r\n";

#[test]
fn lines_parse() {
    assert_eq!(
        parse(b"PUB a.b _INBOX.x 5", true),
        Some(Line::Message(Message { subject: "a.b", reply: Some("_INBOX.x"), headers: 0, total: 5, sid: None }))
    );
    assert_eq!(
        parse(b"HMSG a 9 r 12 30", false),
        Some(Line::Message(Message { subject: "a", reply: Some("r"), headers: 12, total: 30, sid: Some("9") }))
    );
    assert_eq!(parse(b"pub a 0", true).map(|_| ()), Some(()), "operations are case-insensitive");
    assert_eq!(parse(b"SUB a q 7", true), Some(Line::Sub { queue: Some("q"), sid: "7" }));
    for bad in
        [&b"PUB a"[..], b"PUB a b c 5", b"HPUB a 9 5", b"PUB a -1", b"PUB a 99999999999", b"MSG a 5", b"XPUB a 5"]
    {
        assert_eq!(parse(bad, true).filter(|l| matches!(l, Line::Message(_))), None, "{bad:?}");
    }
    assert_eq!(parse(b"MSG a 1 5", true), None, "MSG is never written by a client");
    assert_eq!(parse(b"PUB a 5", false), None, "PUB is never read by a client");
}

#[test]
fn publish_deliver_and_request_reply() {
    let mut c = conn();
    c.read(INFO);
    c.write(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    c.read(b"PONG\r\n");
    c.write(b"SUB orders.* 1\r\nSUB jobs workers 2\r\n");
    c.write(format!("PUB orders.created 19\r\n{SECRET}\r\n").as_bytes());
    c.write(format!("HPUB orders.created 36 55\r\nNATS/1.0\r\nk: {SECRET}\r\n\r\n{SECRET}\r\n").as_bytes());
    c.write(format!("PUB svc.echo _INBOX.abc.1 19\r\n{SECRET}\r\n").as_bytes());
    c.read(format!("MSG orders.created 1 19\r\n{SECRET}\r\n").as_bytes());
    c.read(format!("HMSG jobs 2 36 55\r\nNATS/1.0\r\nk: {SECRET}\r\n\r\n{SECRET}\r\n").as_bytes());
    c.read(b"MSG _INBOX.abc.1 3 5\r\nhello\r\n");
    // A responder: the request names a reply subject without the inbox prefix.
    c.read(b"MSG svc.echo 4 reply.to.me 2\r\nhi\r\n");
    c.write(b"PUB reply.to.me 2\r\nhi\r\n");
    c.read(b"PING\r\n-ERR 'Unknown Subject'\r\n");
    c.write(b"PONG\r\nUNSUB 2\r\n");
    let spans = c.spans();
    no_secret(&spans);
    assert_eq!(
        names(&spans),
        [
            "publish orders.created",
            "publish orders.created",
            "publish svc.echo",
            "receive orders.created",
            "receive jobs",
            "receive _INBOX.>",
            "receive svc.echo",
            "publish",
        ]
    );
    let kinds: Vec<SpanKind> = spans.iter().map(|s| s.kind).collect();
    use SpanKind::{Consumer as C, Producer as P};
    assert_eq!(kinds, [P, P, P, C, C, C, C, P]);
    for s in &spans {
        assert_eq!(attr(s, "messaging.system").as_deref(), Some("nats"));
        assert_eq!(s.status, SpanStatus::Unset);
        let (op, ty) = if s.kind == P { ("publish", "send") } else { ("receive", "receive") };
        assert_eq!(attr(s, "messaging.operation.name").as_deref(), Some(op));
        assert_eq!(attr(s, "messaging.operation.type").as_deref(), Some(ty));
        assert_eq!(attr(s, "server.port").as_deref(), Some("4222"));
    }
    assert_eq!(attr(&spans[0], "messaging.destination.name").as_deref(), Some("orders.created"));
    assert_eq!(attr(&spans[0], "messaging.message.body.size").as_deref(), Some("19"));
    assert_eq!(attr(&spans[1], "messaging.message.body.size").as_deref(), Some("19"), "headers are not body");
    assert_eq!(attr(&spans[2], "messaging.destination.name").as_deref(), Some("svc.echo"), "the reply is not kept");
    assert_eq!(attr(&spans[5], "messaging.destination.name"), None, "an inbox is never named");
    assert_eq!(attr(&spans[5], "messaging.destination.temporary").as_deref(), Some("true"));
    assert_eq!(attr(&spans[5], "messaging.destination.template").as_deref(), Some("_INBOX.>"));
    assert_eq!(attr(&spans[4], "messaging.consumer.group.name").as_deref(), Some("workers"));
    assert_eq!(attr(&spans[3], "messaging.consumer.group.name"), None);
    assert_eq!(attr(&spans[7], "messaging.destination.name"), None, "a reply subject learnt from a request");
    assert_eq!(attr(&spans[7], "messaging.destination.temporary").as_deref(), Some("true"));
    // Publishes take their write's context; deliveries start traces of their own.
    assert_eq!(spans[0].trace_id.0, [9; 16]);
    assert_eq!(spans[0].parent_span_id.map(|p| p.0), Some([0xaa; 8]));
    assert_ne!(spans[0].span_id, spans[1].span_id);
    for s in &spans[3..7] {
        assert_eq!(s.parent_span_id, None);
        assert_ne!(s.trace_id.0, [9; 16]);
    }
    assert_eq!((c.stats.parse_errors, c.stats.unanswered_requests), (0, 0));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn pipelined_publishes_share_the_write_context() {
    let mut c = conn();
    c.read(INFO);
    c.write(b"PUB a 1\r\nx\r\nPUB b 0\r\n\r\nHPUB c 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\n");
    let spans = c.spans();
    assert_eq!(names(&spans), ["publish a", "publish b", "publish c"]);
    assert_eq!(spans[0].span_id.0, [1; 8], "the first message takes the write's span id");
    for s in &spans[1..] {
        assert_eq!((s.trace_id, s.parent_span_id), (spans[0].trace_id, spans[0].parent_span_id));
        assert_ne!(s.span_id, spans[0].span_id);
    }
    assert_eq!(attr(&spans[2], "messaging.message.body.size").as_deref(), Some("0"));
}

#[test]
fn split_anywhere_and_verbose_mode() {
    let writes = b"PUB a 5\r\nhello\r\nPUB b _INBOX.z 3\r\nabc\r\n";
    let reads = b"+OK\r\n+OK\r\nMSG a 1 5\r\nhello\r\n+OK\r\nHMSG b 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n";
    for cut in 0..writes.len().max(reads.len()) {
        let mut c = conn();
        let wc = cut.min(writes.len());
        let rc = cut.min(reads.len());
        c.write(&writes[..wc]);
        c.write(&writes[wc..]);
        c.read(&reads[..rc]);
        c.read(&reads[rc..]);
        let spans = c.spans();
        assert_eq!(names(&spans), ["publish a", "publish b", "receive a", "receive b"], "cut at {cut}");
        assert_eq!(c.stats.parse_errors, 0, "cut at {cut}");
        // A message ends with the transfer that carried its last byte.
        let end = |i: usize| spans[i].end;
        assert!(end(0) <= end(1) && end(2) <= end(3));
    }
    // A payload spanning several reads ends with the last.
    let mut c = conn();
    c.read(b"MSG big 1 10\r\n01234");
    c.read(b"567");
    assert_eq!(c.in_flight(), 1);
    c.read(b"89\r\n");
    let spans = c.spans();
    assert_eq!(names(&spans), ["receive big"]);
    assert!(spans[0].end > spans[0].start);
}

#[test]
fn a_gap_in_a_payload_costs_nothing_in_lines_it_resyncs() {
    let mut c = conn();
    let body = vec![b'x'; 5000];
    let mut w = b"PUB big 5000\r\n".to_vec();
    w.extend_from_slice(&body);
    w.extend_from_slice(b"\r\nPUB next 2\r\nhi\r\n");
    c.write(&w);
    assert_eq!(names(&c.spans()), ["publish big", "publish next"]);
    // Many small messages in one read: the kernel copies the head and the tail, and the lines
    // in between are lost. What is left of the read is not parsed.
    let mut r = Vec::new();
    for i in 0..100 {
        r.extend_from_slice(format!("MSG s.{i} 1 5\r\nhello\r\n").as_bytes());
    }
    c.read(&r);
    let spans = c.spans();
    assert!(spans.iter().all(|s| s.name.starts_with("receive s.")), "{spans:#?}");
    let got = spans.len();
    assert!(got < 100, "nothing made of the gap: {got}");
    assert_eq!(c.stats.parse_errors, 1);
    // Bytes that do not start a line are ignored; a read that starts with one resyncs.
    c.read(b"llo\r\nMSG after.gap 1 5\r\nhello\r\n");
    assert!(c.spans().is_empty());
    c.read(b"MSG s.ok 1 2\r\nhi\r\n");
    assert_eq!(names(&c.spans()), ["receive s.ok"]);
    // A gap past a payload's end: that message ends in the read, nothing after it is guessed.
    let mut r = b"MSG s.one 1 2000\r\n".to_vec();
    r.extend_from_slice(&[b'y'; 2000]);
    r.extend_from_slice(&b"\r\nMSG s.two 1 5\r\nhello\r\n".repeat(40));
    c.read(&r);
    assert_eq!(names(&c.spans()), ["receive s.one"]);
}

#[test]
fn unknown_lines_stop_a_direction_until_it_resyncs() {
    let mut c = conn();
    c.write(b"PUB a 1\r\nx\r\nBOGUS 12\r\n");
    c.write(b"whatever\r\n");
    c.write(b"PUB b 1\r\ny\r\n");
    assert_eq!(names(&c.spans()), ["publish a", "publish b"]);
    assert_eq!(c.stats.parse_errors, 1);
}

#[test]
fn open_messages_at_the_end_are_counted() {
    let mut c = conn();
    c.write(b"PUB a 100\r\nonly part");
    c.read(b"MSG b 1 100\r\npart");
    assert_eq!(c.in_flight(), 2);
    c.end(EndReason::Closed);
    assert!(c.spans().is_empty());
    assert_eq!(c.stats.unanswered_requests, 2);
    let mut c = conn();
    c.write(b"PUB a 100\r\nonly part");
    c.end(EndReason::Evicted);
    assert_eq!(c.stats.expired_requests, 1);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..3000 {
        let mut c = conn();
        for _ in 0..(seed % 6) {
            let mut buf = Vec::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let words: [&[u8]; 12] =
                    [b"PUB ", b"MSG a ", b"3", b"\r\n", b"HPUB ", b"HMSG ", b"1 ", b"x", b" ", b"-ERR", b"+OK", b"12 "];
                buf.extend_from_slice(words[(seed % 12) as usize]);
            }
            c.transfer(seed.is_multiple_of(2), &buf, true);
        }
        c.idle(u64::MAX);
        c.end(EndReason::Closed);
        let _ = c.spans();
    }
}
