//! A streaming reader of PostgreSQL protocol 3 messages over one direction of a captured
//! connection, with gaps.
//!
//! Every message is a type byte and a 4-byte big-endian length (which counts itself); the
//! client's first message (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) has no type
//! byte, and the server answers SSLRequest and GSSENCRequest with one bare byte. Lengths make the
//! framing immune to a gap inside a message; a gap that swallows a message's header loses it:
//! the reader reports [`WireEvent::Lost`] and ignores bytes until [`Reader::restart`].
//!
//! Only the first bytes of the message types the caller asks for are kept ([`Reader::keep`]);
//! data rows and the like are counted, never copied.

use crate::protocols::database::{Piece, pieces};

/// Largest message length taken as real (PostgreSQL's own limit is 1 GiB).
const MAX_LEN: u32 = 1 << 30;

/// A message: its type (0 for the client's untyped first messages), the true length of its
/// body, and its first bytes as far as they were kept and captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<M> {
    pub typ: u8,
    pub len: u32,
    pub body: Vec<u8>,
    /// `body` is not the whole body (a gap, or the cap).
    pub cut: bool,
    pub first: M,
    pub last: M,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireEvent<M> {
    Message(Message<M>),
    Lost,
}

#[derive(Clone, Debug)]
enum State<M> {
    /// Collecting a header (5 bytes, or 8 when an untyped message may come).
    Header {
        buf: Vec<u8>,
        first: Option<M>,
    },
    Body {
        msg: Message<M>,
        remaining: u64,
        cap: usize,
    },
    Lost,
}

/// See the module docs.
pub struct Reader<M> {
    state: State<M>,
    /// The next message may be untyped (the client's first).
    untyped: bool,
    /// The next byte is a bare answer to SSLRequest / GSSENCRequest.
    bare_byte: bool,
    keep: fn(u8) -> usize,
}

/// Whether `b[0..8]` starts an untyped client message: a length, then protocol 3.0 or one of
/// the request codes.
pub fn untyped_start(b: &[u8]) -> bool {
    if b.len() < 8 {
        return false;
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let known = matches!(
        code,
        tracer_common::classify::PG_PROTOCOL_3
            | tracer_common::classify::PG_SSL_REQUEST
            | tracer_common::classify::PG_GSSENC_REQUEST
            | CANCEL_REQUEST
    );
    known && (8..=10_000).contains(&len)
}

/// CancelRequest's code.
pub const CANCEL_REQUEST: u32 = 80_877_102;

impl<M: Copy> Reader<M> {
    /// A reader that keeps at most `keep(type)` bytes of each message's body.
    pub fn new(keep: fn(u8) -> usize, untyped_first: bool) -> Self {
        Self { state: State::Header { buf: Vec::new(), first: None }, untyped: untyped_first, bare_byte: false, keep }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next bytes fed start a message.
    pub fn restart(&mut self) {
        self.state = State::Header { buf: Vec::new(), first: None };
        self.bare_byte = false;
    }

    /// The next message may be an untyped one (after the server refused SSL).
    pub fn expect_untyped(&mut self) {
        self.untyped = true;
    }

    /// The next byte is a bare one-byte answer.
    pub fn expect_bare_byte(&mut self) {
        self.bare_byte = true;
    }

    pub fn feed(&mut self, head: &[u8], tail: &[u8], len: u64, meta: M, out: &mut Vec<WireEvent<M>>) {
        for p in pieces(head, tail, len) {
            match p {
                Piece::Bytes(b) => self.bytes(b, meta, out),
                Piece::Gap(0) => {}
                Piece::Gap(n) => self.gap(n, meta, out),
            }
        }
    }

    fn lose(&mut self, out: &mut Vec<WireEvent<M>>) {
        if !matches!(self.state, State::Lost) {
            self.state = State::Lost;
            out.push(WireEvent::Lost);
        }
    }

    fn gap(&mut self, n: u64, meta: M, out: &mut Vec<WireEvent<M>>) {
        match &mut self.state {
            State::Body { remaining, msg, .. } if n <= *remaining => {
                *remaining -= n;
                msg.cut = true;
                msg.last = meta;
                if *remaining == 0 {
                    self.finish(out);
                }
            }
            State::Lost => {}
            _ => self.lose(out),
        }
    }

    fn bytes(&mut self, mut b: &[u8], meta: M, out: &mut Vec<WireEvent<M>>) {
        while !b.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Header { buf, first } => {
                    if first.is_none() {
                        *first = Some(meta);
                    }
                    if self.bare_byte && buf.is_empty() {
                        self.bare_byte = false;
                        out.push(WireEvent::Message(Message {
                            typ: b[0],
                            len: 0,
                            body: Vec::new(),
                            cut: false,
                            first: meta,
                            last: meta,
                        }));
                        self.state = State::Header { buf: Vec::new(), first: None };
                        b = &b[1..];
                        continue;
                    }
                    let need = if self.untyped { 8 } else { 5 };
                    let take = (need - buf.len()).min(b.len());
                    buf.extend_from_slice(&b[..take]);
                    b = &b[take..];
                    if buf.len() < need {
                        return;
                    }
                    let first = first.unwrap_or(meta);
                    let (typ, total, extra) = if self.untyped && untyped_start(buf) {
                        (0, u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]), buf[4..].to_vec())
                    } else {
                        (buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]), buf[5..].to_vec())
                    };
                    self.untyped = false;
                    if !(4..=MAX_LEN).contains(&total) || (typ != 0 && !typ.is_ascii_alphanumeric()) {
                        self.lose(out);
                        return;
                    }
                    let body_len = total - 4;
                    if extra.len() as u64 > u64::from(body_len) {
                        // Untyped probing read past a short typed message: not a stream of
                        // messages we can follow.
                        self.lose(out);
                        return;
                    }
                    let cap = (self.keep)(typ).min(body_len as usize);
                    let msg = Message { typ, len: body_len, body: Vec::new(), cut: false, first, last: meta };
                    self.state = State::Body { msg, remaining: u64::from(body_len), cap };
                    if !extra.is_empty() {
                        self.body_bytes(&extra, meta, out);
                    } else if body_len == 0 {
                        self.finish(out);
                    }
                }
                State::Body { .. } => {
                    let n = self.body_bytes(b, meta, out);
                    b = &b[n..];
                }
            }
        }
    }

    /// Adds bytes to the body being read; returns how many it took.
    fn body_bytes(&mut self, b: &[u8], meta: M, out: &mut Vec<WireEvent<M>>) -> usize {
        let State::Body { msg, remaining, cap } = &mut self.state else { return 0 };
        let n = (*remaining).min(b.len() as u64) as usize;
        let room = cap.saturating_sub(msg.body.len());
        msg.body.extend_from_slice(&b[..n.min(room)]);
        *remaining -= n as u64;
        msg.last = meta;
        if *remaining == 0 {
            self.finish(out);
        }
        n
    }

    fn finish(&mut self, out: &mut Vec<WireEvent<M>>) {
        let State::Body { mut msg, .. } =
            std::mem::replace(&mut self.state, State::Header { buf: Vec::new(), first: None })
        else {
            return;
        };
        msg.cut |= (msg.body.len() as u64) < u64::from(msg.len);
        out.push(WireEvent::Message(msg));
    }
}

/// Splits a body at NUL bytes: `(string, rest)`.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_all(_: u8) -> usize {
        1024
    }

    fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![typ];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn read(r: &mut Reader<u32>, chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            r.feed(c, b"", c.len() as u64, i as u32, &mut out);
        }
        out.into_iter()
            .map(|e| match e {
                WireEvent::Message(m) => (m.typ, m.body, m.first, m.last),
                WireEvent::Lost => (b'!', vec![], 0, 0),
            })
            .collect()
    }

    #[test]
    fn startup_then_typed_messages_split_anywhere() {
        let mut startup = Vec::new();
        let params = b"\0\x03\0\0user\0app\0database\0shop\0\0";
        startup.extend_from_slice(&(params.len() as u32 + 4).to_be_bytes());
        startup.extend_from_slice(params);
        let all = [startup.clone(), msg(b'Q', b"SELECT 1\0"), msg(b'S', b"")].concat();
        for cut in 1..all.len() {
            let mut r = Reader::new(keep_all, true);
            let got = read(&mut r, &[&all[..cut], &all[cut..]]);
            let types: Vec<u8> = got.iter().map(|g| g.0).collect();
            assert_eq!(types, vec![0, b'Q', b'S'], "cut at {cut}");
            assert_eq!(got[0].1, params.to_vec());
            assert_eq!(got[1].1, b"SELECT 1\0".to_vec());
        }
    }

    #[test]
    fn bare_byte_answers_and_typed_starts() {
        let mut r = Reader::new(keep_all, false);
        r.expect_bare_byte();
        let got = read(&mut r, &[b"N", &msg(b'Z', b"I")]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![b'N', b'Z']);
        // A client that starts mid-connection: typed at once.
        let mut r = Reader::new(keep_all, true);
        let got = read(&mut r, &[&msg(b'Q', b"SELECT 1\0")]);
        assert_eq!(got[0].0, b'Q');
    }

    #[test]
    fn gaps_inside_bodies_cost_nothing_gaps_over_headers_lose() {
        let mut r = Reader::new(|t| if t == b'D' { 0 } else { 64 }, false);
        let mut bytes = msg(b'D', &vec![7u8; 5000]);
        bytes.extend(msg(b'C', b"SELECT 1\0"));
        bytes.extend(msg(b'Z', b"I"));
        let mut out = Vec::new();
        r.feed(&bytes[..1024], &bytes[bytes.len() - 64..], bytes.len() as u64, 1u32, &mut out);
        let types: Vec<u8> = out
            .iter()
            .map(|e| match e {
                WireEvent::Message(m) => m.typ,
                WireEvent::Lost => b'!',
            })
            .collect();
        assert_eq!(types, vec![b'D', b'C', b'Z']);
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend(msg(b'D', &[7u8; 40]));
        }
        out.clear();
        r.feed(&bytes[..1024], &bytes[bytes.len() - 64..], bytes.len() as u64, 2, &mut out);
        assert_eq!(out.last(), Some(&WireEvent::Lost));
        assert!(r.is_lost());
        out.clear();
        r.feed(&msg(b'Z', b"I"), b"", 6, 3, &mut out);
        assert!(out.is_empty());
        r.restart();
        r.feed(&msg(b'Z', b"I"), b"", 6, 4, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn garbage_loses_never_panics() {
        let mut r = Reader::new(keep_all, false);
        assert_eq!(read(&mut r, &[b"\x01\0\0\0\x05x"]), vec![(b'!', vec![], 0, 0)]);
        let mut r = Reader::new(keep_all, false);
        assert_eq!(read(&mut r, &[b"Q\0\0\0\x02"]), vec![(b'!', vec![], 0, 0)]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 48) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(b"QPBESZDC\0\0\0\x04\x05\x08\x03"[(seed % 15) as usize]);
            }
            let mut r = Reader::new(keep_all, seed.is_multiple_of(2));
            let mut out = Vec::new();
            r.feed(&buf, b"", buf.len() as u64 + seed % 5, 0u32, &mut out);
        }
    }
}
