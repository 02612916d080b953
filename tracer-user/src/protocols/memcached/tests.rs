//! Memcached through the protocol seam: transfers in, spans out.

use tracer_common::Proto;

use super::Memcached;
use crate::protocols::database::testkit::{Conn, attr, summary};

fn conn() -> Conn<Memcached> {
    let mut c = Conn::new(Memcached::new(), Proto::Memcached);
    c.info.tuple.dport = 11211;
    c
}

fn ok(name: &str) -> (String, String, bool) {
    (name.to_owned(), String::new(), false)
}

#[test]
fn storage_retrieval_and_errors() {
    let mut c = conn();
    c.write(b"set user:42 0 0 19\r\nsecret-literal-4242\r\n");
    c.read(b"STORED\r\n");
    c.write(b"get user:42 user:43\r\n");
    c.read(b"VALUE user:42 0 19\r\nsecret-literal-4242\r\nEND\r\n");
    c.write(b"get nothing\r\n");
    c.read(b"END\r\n");
    c.write(b"incr counter 1\r\n");
    c.read(b"NOT_FOUND\r\n");
    c.write(b"incr user:42 1\r\n");
    c.read(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.write(b"delete user:42 noreply\r\n");
    c.write(b"bogus\r\n");
    let spans = c.spans();
    assert_eq!(
        summary(&spans),
        [ok("set"), ok("get"), ok("get"), ok("incr"), ("incr".into(), "CLIENT_ERROR".into(), true), ok("delete")]
    );
    assert_eq!(attr(&spans[1], "db.operation.batch.size").as_deref(), Some("2"));
    assert_eq!(attr(&spans[2], "db.operation.batch.size"), None);
    assert_eq!(attr(&spans[0], "db.system.name").as_deref(), Some("memcached"));
    assert_eq!(attr(&spans[0], "db.operation.name").as_deref(), Some("set"));
    for s in &spans {
        assert!(!format!("{s:?}").contains("secret") && !format!("{s:?}").contains("user:4"), "{s:#?}");
    }
    // An unknown command: no longer traced.
    c.write(b"get a\r\n");
    c.read(b"END\r\n");
    assert!(c.spans().is_empty());
}

#[test]
fn replies_split_anywhere_and_meta_commands() {
    let reply = b"VALUE a 0 3\r\nabc\r\nVALUE b 0 2\r\nxy\r\nEND\r\nVA 2 f0\r\nhi\r\nHD\r\nEN\r\nMN\r\n";
    for cut in 0..reply.len() {
        let mut c = conn();
        c.write(b"gets a b\r\nmg k v f\r\nms k 2 T0\r\nhi\r\nmg gone v\r\nmn\r\n");
        c.read(&reply[..cut]);
        c.read(&reply[cut..]);
        assert_eq!(summary(&c.spans()), [ok("gets"), ok("mg"), ok("ms"), ok("mg"), ok("mn")], "cut at {cut}");
        assert_eq!(c.in_flight(), 0);
    }
    let mut c = conn();
    c.write(b"mg k v q\r\n");
    c.read(b"EN\r\n");
    assert!(c.spans().is_empty(), "quiet mode is not traced");
}

#[test]
fn a_large_multi_get_in_a_gap_ends_at_end() {
    let mut c = conn();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    c.write(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let mut reply = Vec::new();
    for k in &keys {
        reply.extend_from_slice(format!("VALUE {k} 0 4\r\nabcd\r\n").as_bytes());
    }
    reply.extend_from_slice(b"END\r\n");
    c.read(&reply);
    c.write(b"get k1\r\n");
    c.read(b"VALUE k1 0 4\r\nabcd\r\nEND\r\n");
    let spans = c.spans();
    assert_eq!(summary(&spans), [ok("get"), ok("get")]);
    assert_eq!(attr(&spans[0], "db.operation.batch.size").as_deref(), Some("100"));
}

#[test]
fn stats_lost_in_a_gap_resync_at_the_next_command() {
    let mut c = conn();
    c.write(b"stats\r\n");
    let mut reply = b"STAT pid 1\r\n".repeat(200);
    reply.extend_from_slice(b"STAT x");
    c.read(&reply);
    c.read(b" 1\r\nEND\r\n");
    c.write(b"version\r\n");
    c.read(b"VERSION 1.6.18\r\n");
    let spans = c.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[1].name, "version");
    assert_eq!(c.stats.unmatched_responses, 0);
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
                let words: [&[u8]; 10] =
                    [b"get ", b"VALUE k 0 ", b"3", b"\r\n", b"END", b"set k 0 0 ", b"mg ", b"VA ", b" ", b"x"];
                buf.extend_from_slice(words[(seed % 10) as usize]);
            }
            c.transfer(seed.is_multiple_of(2), &buf, true);
        }
        c.idle(u64::MAX);
        let _ = c.spans();
    }
}
