//! Redis through the protocol seam: transfers in, spans out.

use tracer_common::Proto;

use super::Redis;
use crate::model::{SpanId, SpanKind, SpanStatus};
use crate::protocols::database::testkit::{Conn, attr, summary};
use crate::streams::EndReason;

fn conn() -> Conn<Redis> {
    Conn::new(Redis::new(), Proto::Redis)
}

fn command(words: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        b.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    b
}

fn s(name: &str, code: &str, err: bool) -> (String, String, bool) {
    (name.to_owned(), code.to_owned(), err)
}

#[test]
fn one_span_per_command_with_conventions() {
    let mut c = conn();
    let w = c.write(&command(&["SET", "user:1", "secret-value"]));
    c.read(b"+OK\r\n");
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!((span.name.as_str(), span.kind, &span.status), ("SET", SpanKind::Client, &SpanStatus::Unset));
    assert_eq!(attr(span, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(attr(span, "db.operation.name").as_deref(), Some("SET"));
    assert_eq!(attr(span, "server.port").as_deref(), Some("6379"));
    assert_eq!(attr(span, "db.query.text"), None, "arguments are never exported");
    assert!(
        span.attributes
            .iter()
            .all(|a| !a.value.to_string().contains("secret") && !a.value.to_string().contains("user:1"))
    );
    assert_eq!(span.span_id, SpanId([1; 8]), "the write's kernel context");
    assert_eq!(span.parent_span_id, Some(SpanId([0xaa; 8])));
    assert!(span.start <= span.end);
    let _ = w;
}

#[test]
fn pipeline_gives_one_span_per_command_in_order() {
    let mut c = conn();
    let batch =
        [command(&["INCR", "n"]), command(&["GET", "n"]), command(&["LPUSH", "l", "a"]), command(&["HGET", "h", "f"])]
            .concat();
    c.write(&batch);
    // Replies split at awkward places.
    let replies = b":1\r\n$1\r\n1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n$-1\r\n";
    c.read(&replies[..6]);
    c.read(&replies[6..30]);
    c.read(&replies[30..]);
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        vec![s("INCR", "", false), s("GET", "", false), s("LPUSH", "WRONGTYPE", true), s("HGET", "", false)]
    );
    // One write: one trace and parent, four span ids.
    let mut ids: Vec<_> = spans.iter().map(|s| s.span_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert!(spans.iter().all(|s| s.parent_span_id == Some(SpanId([0xaa; 8]))));
}

#[test]
fn multi_exec_and_resp3() {
    let mut c = conn();
    c.write(&command(&["HELLO", "3"]));
    c.read(b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n");
    c.write(&[command(&["MULTI"]), command(&["SET", "a", "1"]), command(&["LPOP", "a"]), command(&["EXEC"])].concat());
    c.read(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n");
    // A push arrives between replies: not a reply.
    c.read(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n");
    c.read(b"*2\r\n+OK\r\n-WRONGTYPE Operation against a key\r\n");
    assert_eq!(
        summary(&c.spans()),
        vec![
            s("HELLO", "", false),
            s("MULTI", "", false),
            s("SET", "", false),
            s("LPOP", "", false),
            s("EXEC", "WRONGTYPE", true)
        ]
    );
}

#[test]
fn select_names_the_database_and_containers_their_subcommand() {
    let mut c = conn();
    c.write(&command(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]));
    c.read(b"+OK\r\n");
    c.write(&command(&["SELECT", "2"]));
    c.read(b"+OK\r\n");
    c.write(b"GET k\r\n");
    c.read(b"$-1\r\n");
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("CLIENT SETINFO", "", false), s("SELECT", "", false), s("GET", "", false)]);
    assert_eq!(attr(&spans[2], "db.namespace").as_deref(), Some("2"));
    assert_eq!(attr(&spans[1], "db.namespace"), None);
}

#[test]
fn a_reply_lost_in_a_gap_ends_its_command_as_unknown_and_never_shifts() {
    let mut c = conn();
    c.write(&command(&["LRANGE", "big", "0", "-1"]));
    let mut reply = b"*400\r\n".to_vec();
    for _ in 0..400 {
        reply.extend_from_slice(b"$5\r\nhello\r\n");
    }
    // The reply arrives in two reads; the first loses an element header in its gap.
    let (a, b) = reply.split_at(3000);
    c.read(a);
    c.read(b);
    let spans = c.spans();
    assert_eq!(summary(&spans), vec![s("LRANGE", "", false)]);
    assert_eq!(spans[0].status, SpanStatus::Unset);
    // The client writes its next command: back in step.
    c.write(&command(&["GET", "k"]));
    c.read(b"-ERR boom\r\n");
    assert_eq!(summary(&c.spans()), vec![s("GET", "ERR", true)]);
}

#[test]
fn pipelined_commands_over_a_lost_reply_wait_for_quiet() {
    let mut c = conn();
    c.write(&[command(&["LRANGE", "big", "0", "-1"]), command(&["GET", "k"])].concat());
    let mut reply = b"*400\r\n".to_vec();
    for _ in 0..400 {
        reply.extend_from_slice(b"$5\r\nhello\r\n");
    }
    reply.extend_from_slice(b"$1\r\nv\r\n");
    c.read(&reply);
    assert_eq!(summary(&c.spans()), vec![s("LRANGE", "", false), s("GET", "", false)]);
    // Replies are ignored (a later one could belong to what was lost) until the connection
    // has been quiet.
    c.write(&command(&["INCR", "n"]));
    c.read(b":1\r\n");
    assert!(c.spans().is_empty());
    c.idle(c.config.desync_timeout_ns);
    assert_eq!(summary(&c.spans()), vec![s("INCR", "", false)], "ended as unknown");
    c.write(&command(&["INCR", "n"]));
    c.read(b":2\r\n");
    assert_eq!(summary(&c.spans()), vec![s("INCR", "", false)]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn subscribe_stops_tracing_and_close_counts_the_unanswered() {
    let mut c = conn();
    c.write(&command(&["GET", "a"]));
    c.end(EndReason::Closed);
    assert_eq!(c.stats.unanswered_requests, 1);
    let mut c = conn();
    c.write(&command(&["SUBSCRIBE", "ch"]));
    c.read(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    c.read(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
    c.write(&command(&["PING"]));
    assert!(c.spans().is_empty());
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn commands_split_over_writes_take_the_first_writes_context() {
    let mut c = conn();
    let cmd = command(&["SET", "k", "v"]);
    c.write(&cmd[..5]);
    c.write(&cmd[5..]);
    c.read(b"+OK\r\n");
    let spans = c.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_id, SpanId([1; 8]));
}
