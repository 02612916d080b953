//! A streaming reader of RESP (Redis's serialisation protocol, versions 2 and 3) over one
//! direction of a captured connection, with gaps.
//!
//! It follows the framing of every value (simple strings, errors, integers, bulk strings,
//! arrays, and RESP3's null, boolean, double, big number, blob error, verbatim string, map, set,
//! attribute and push) and reports each complete top-level value with the little the agent
//! keeps of it: a command's name (and a short second word, for `SELECT`'s index and container
//! commands' subcommand), an error's prefix, whether a reply holds an error. Nothing else of a
//! payload is kept.
//!
//! A bulk string that a gap cuts costs nothing (its length is known). A gap that swallows a
//! type byte or a line loses the framing: the reader reports [`RespEvent::Lost`] and ignores
//! every byte until [`Resp::restart`] says a transfer starts a value again. Malformed bytes do
//! the same.

/// Bytes kept of a line (a header or a simple value); the rest of a longer line is skipped.
const MAX_LINE: usize = 64;
/// Bytes kept of a command name and of its second word.
pub const MAX_NAME: usize = 32;
const MAX_ARG: usize = 16;
/// Aggregates nested deeper than this are taken as garbage.
const MAX_DEPTH: usize = 64;

/// Which direction the reader follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Commands (the client's writes): arrays of bulk strings, or inline lines.
    Commands,
    /// Replies (the client's reads).
    Replies,
}

/// What the reader keeps of a complete top-level value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A command: its first word as sent (at most [`MAX_NAME`] bytes), its second word when
    /// short, and how many words it had.
    Command { name: Vec<u8>, arg1: Option<Vec<u8>>, argc: u64 },
    /// An error reply (`-` or `!`): its first word, e.g. `ERR`, `WRONGTYPE`.
    Error { prefix: String },
    /// Out-of-band data (RESP3 push), no reply to any command.
    Push,
    /// Any other reply; `nested_error` is the prefix of the first error inside it (EXEC's).
    Reply { nested_error: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespEvent<M> {
    /// A value, with the metadata of the chunks that carried its first and last bytes.
    Value { value: Value, first: M, last: M },
    /// The framing was lost (a gap, or malformed bytes).
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// Expecting a type byte.
    Start,
    /// Reading the line after type byte `typ` (`b' '` for an inline command).
    Line {
        typ: u8,
        buf: Vec<u8>,
        long: bool,
    },
    /// Reading `remaining` bytes of a bulk payload and its CRLF.
    Bulk {
        remaining: u64,
        typ: u8,
        keep: Vec<u8>,
        cap: usize,
    },
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    remaining: u64,
    /// An attribute map: it precedes a value and is no element of its parent.
    attr: bool,
}

/// The value being read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Current<M> {
    first: Option<M>,
    top: u8,
    top_len: u64,
    name: Option<Vec<u8>>,
    arg1: Option<Vec<u8>>,
    error: Option<String>,
    nested_error: Option<String>,
}

impl<M> Current<M> {
    fn new() -> Self {
        Self { first: None, top: 0, top_len: 0, name: None, arg1: None, error: None, nested_error: None }
    }
}

/// See the module docs.
pub struct Resp<M> {
    side: Side,
    tok: Tok,
    stack: Vec<Frame>,
    cur: Current<M>,
}

impl<M: Copy> Resp<M> {
    pub fn new(side: Side) -> Self {
        Self { side, tok: Tok::Start, stack: Vec::new(), cur: Current::new() }
    }

    pub fn is_lost(&self) -> bool {
        self.tok == Tok::Lost
    }

    /// The next bytes fed start a value.
    pub fn restart(&mut self) {
        self.tok = Tok::Start;
        self.stack.clear();
        self.cur = Current::new();
    }

    /// Feeds one transfer: its captured `head`, its captured `tail` and its true length `len`
    /// (the bytes between are a gap).
    pub fn feed(&mut self, head: &[u8], tail: &[u8], len: u64, meta: M, out: &mut Vec<RespEvent<M>>) {
        for piece in crate::protocols::database::pieces(head, tail, len) {
            match piece {
                crate::protocols::database::Piece::Bytes(b) => self.bytes(b, meta, out),
                crate::protocols::database::Piece::Gap(0) => {}
                crate::protocols::database::Piece::Gap(n) => self.gap(n, meta, out),
            }
        }
    }

    fn lose(&mut self, out: &mut Vec<RespEvent<M>>) {
        if self.tok != Tok::Lost {
            self.tok = Tok::Lost;
            self.stack.clear();
            out.push(RespEvent::Lost);
        }
    }

    fn gap(&mut self, n: u64, meta: M, out: &mut Vec<RespEvent<M>>) {
        match &mut self.tok {
            Tok::Bulk { remaining, .. } if n < *remaining => *remaining -= n,
            Tok::Bulk { remaining, .. } if n == *remaining => {
                self.end_bulk(meta, out);
            }
            Tok::Lost => {}
            _ => self.lose(out),
        }
    }

    fn bytes(&mut self, mut b: &[u8], meta: M, out: &mut Vec<RespEvent<M>>) {
        while !b.is_empty() {
            match &mut self.tok {
                Tok::Lost => return,
                Tok::Start => {
                    let c = b[0];
                    if self.stack.is_empty() && self.cur.first.is_none() {
                        self.cur.first = Some(meta);
                    }
                    if known_type(c) {
                        self.tok = Tok::Line { typ: c, buf: Vec::new(), long: false };
                        b = &b[1..];
                    } else if self.side == Side::Commands && self.stack.is_empty() && c != b'\r' && c != b'\n' {
                        // An inline command: the whole line is the command.
                        self.tok = Tok::Line { typ: b' ', buf: Vec::new(), long: false };
                    } else if self.side == Side::Commands && self.stack.is_empty() {
                        // Blank line between inline commands.
                        self.cur.first = None;
                        b = &b[1..];
                    } else {
                        self.lose(out);
                        return;
                    }
                }
                Tok::Line { buf, long, .. } => {
                    let end = b.iter().position(|&c| c == b'\n');
                    let part = &b[..end.unwrap_or(b.len())];
                    let room = MAX_LINE.saturating_sub(buf.len());
                    buf.extend_from_slice(&part[..part.len().min(room)]);
                    *long |= part.len() > room;
                    match end {
                        None => return,
                        Some(i) => {
                            b = &b[i + 1..];
                            let Tok::Line { typ, mut buf, long } = std::mem::replace(&mut self.tok, Tok::Start) else {
                                unreachable!()
                            };
                            if buf.last() == Some(&b'\r') {
                                buf.pop();
                            }
                            self.end_line(typ, &buf, long, meta, out);
                        }
                    }
                }
                Tok::Bulk { remaining, keep, cap, .. } => {
                    let n = (*remaining).min(b.len() as u64) as usize;
                    // The payload's last two bytes are its CRLF: never kept.
                    let payload = n.min(remaining.saturating_sub(2) as usize);
                    let room = cap.saturating_sub(keep.len());
                    keep.extend_from_slice(&b[..payload.min(room)]);
                    *remaining -= n as u64;
                    b = &b[n..];
                    if *remaining == 0 {
                        self.end_bulk(meta, out);
                    }
                }
            }
        }
    }

    fn end_line(&mut self, typ: u8, line: &[u8], long: bool, meta: M, out: &mut Vec<RespEvent<M>>) {
        match typ {
            b' ' => {
                let words: Vec<&[u8]> = line.split(|c| c.is_ascii_whitespace()).filter(|w| !w.is_empty()).collect();
                let Some(first) = words.first() else {
                    self.cur.first = None;
                    return;
                };
                self.cur.top = b'*';
                self.cur.name = Some(first[..first.len().min(MAX_NAME)].to_vec());
                self.cur.arg1 = words.get(1).filter(|w| w.len() <= MAX_ARG).map(|w| w.to_vec());
                self.cur.top_len = words.len() as u64;
                self.complete(meta, out);
            }
            b'+' | b':' | b',' | b'#' | b'_' | b'(' => {
                self.note_top(typ);
                self.complete(meta, out);
            }
            b'-' => {
                self.note_top(typ);
                self.note_error(line);
                self.complete(meta, out);
            }
            b'$' | b'!' | b'=' => {
                let Some(n) = (!long).then(|| number(line)).flatten() else { return self.lose(out) };
                self.note_top(typ);
                if n < 0 {
                    return self.complete(meta, out);
                }
                let cap = self.capture_cap(typ);
                self.tok = Tok::Bulk { remaining: n as u64 + 2, typ, keep: Vec::new(), cap };
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some(n) = (!long).then(|| number(line)).flatten() else { return self.lose(out) };
                let attr = typ == b'|';
                if !attr {
                    self.note_top(typ);
                }
                let n = if typ == b'%' || attr { (n.max(0) as u64).saturating_mul(2) } else { n.max(0) as u64 };
                if self.stack.is_empty() && !attr {
                    self.cur.top_len = n;
                }
                if n == 0 {
                    if !attr {
                        self.complete(meta, out);
                    }
                    return;
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.lose(out);
                }
                self.stack.push(Frame { remaining: n, attr });
            }
            _ => self.lose(out),
        }
    }

    /// Records the type of the top-level value.
    fn note_top(&mut self, typ: u8) {
        if self.stack.is_empty() {
            self.cur.top = typ;
        }
    }

    fn note_error(&mut self, text: &[u8]) {
        let prefix = error_prefix(text);
        if self.stack.is_empty() {
            self.cur.error = Some(prefix);
        } else if self.cur.nested_error.is_none() {
            self.cur.nested_error = Some(prefix);
        }
    }

    /// Bytes worth keeping of a bulk string starting now.
    fn capture_cap(&self, typ: u8) -> usize {
        if typ == b'!' {
            return MAX_LINE;
        }
        if self.side != Side::Commands || self.stack.len() != 1 || self.cur.top != b'*' {
            return 0;
        }
        match self.cur.top_len - self.stack[0].remaining {
            0 => MAX_NAME,
            1 => MAX_ARG + 1,
            _ => 0,
        }
    }

    fn end_bulk(&mut self, meta: M, out: &mut Vec<RespEvent<M>>) {
        let Tok::Bulk { typ, keep, cap, .. } = std::mem::replace(&mut self.tok, Tok::Start) else { return };
        if typ == b'!' {
            self.note_error(&keep);
        } else if cap > 0 && self.stack.len() == 1 {
            match self.cur.top_len - self.stack[0].remaining {
                0 => self.cur.name = Some(keep),
                1 if keep.len() <= MAX_ARG => self.cur.arg1 = Some(keep),
                _ => {}
            }
        }
        self.complete(meta, out);
    }

    /// A value ended: count it in its aggregate, and report the top-level value it completes.
    fn complete(&mut self, meta: M, out: &mut Vec<RespEvent<M>>) {
        while let Some(f) = self.stack.last_mut() {
            f.remaining -= 1;
            if f.remaining > 0 {
                return;
            }
            let f = self.stack.pop();
            if f.is_some_and(|f| f.attr) {
                // An attribute ended; the value it annotates follows.
                return;
            }
        }
        let cur = std::mem::replace(&mut self.cur, Current::new());
        let first = cur.first.unwrap_or(meta);
        let value = match (self.side, cur.top) {
            (Side::Commands, b'*') => {
                Value::Command { name: cur.name.unwrap_or_default(), arg1: cur.arg1, argc: cur.top_len }
            }
            (_, b'-' | b'!') => Value::Error { prefix: cur.error.unwrap_or_else(|| "ERR".to_owned()) },
            (Side::Replies, b'>') => Value::Push,
            _ => Value::Reply { nested_error: cur.nested_error.or(cur.error) },
        };
        out.push(RespEvent::Value { value, first, last: meta });
    }
}

fn known_type(c: u8) -> bool {
    matches!(c, b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b',' | b'#' | b'!' | b'=' | b'(' | b'%' | b'~' | b'>' | b'|')
}

fn number(line: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(line).ok()?;
    let n: i64 = s.parse().ok()?;
    (n >= -1).then_some(n)
}

/// An error's first word when it is an upper-case code (`ERR`, `WRONGTYPE`, `MOVED`…), else
/// `ERR`: the rest of the message may quote user data.
pub fn error_prefix(text: &[u8]) -> String {
    let word = text.split(|c| *c == b' ').next().unwrap_or_default();
    if !word.is_empty() && word.len() <= MAX_NAME && word.iter().all(|c| c.is_ascii_uppercase() || *c == b'_') {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(side: Side, chunks: &[&[u8]]) -> Vec<RespEvent<u32>> {
        let mut r = Resp::new(side);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            r.feed(c, b"", c.len() as u64, i as u32, &mut out);
        }
        out
    }

    fn values(evs: &[RespEvent<u32>]) -> Vec<Value> {
        evs.iter()
            .map(|e| match e {
                RespEvent::Value { value, .. } => value.clone(),
                RespEvent::Lost => Value::Error { prefix: "LOST".into() },
            })
            .collect()
    }

    fn cmd(name: &str, arg1: Option<&str>, argc: u64) -> Value {
        Value::Command { name: name.into(), arg1: arg1.map(|a| a.as_bytes().to_vec()), argc }
    }

    #[test]
    fn commands_pipelined_and_split_anywhere() {
        let bytes = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n";
        let want = vec![cmd("SET", Some("key"), 3), cmd("GET", Some("key"), 2), cmd("PING", None, 1)];
        assert_eq!(values(&read(Side::Commands, &[bytes])), want);
        for cut in 1..bytes.len() {
            let evs = read(Side::Commands, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(values(&evs), want, "cut at {cut}");
        }
        let evs = read(Side::Commands, &[&bytes[..10], &bytes[10..]]);
        let RespEvent::Value { first, last, .. } = &evs[0] else { panic!() };
        assert_eq!((*first, *last), (0, 1));
    }

    #[test]
    fn every_reply_type_of_resp2_and_resp3() {
        let bytes: &[&[u8]] = &[
            b"+OK\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b">3\r\n+message\r\n+chan\r\n+hi\r\n",
            b"|1\r\n+ttl\r\n:3600\r\n+OK\r\n",
            b"*3\r\n+OK\r\n-ERR bad\r\n*1\r\n-WRONGTYPE x\r\n",
        ];
        let evs = read(Side::Replies, &[&bytes.concat()]);
        let ok = Value::Reply { nested_error: None };
        let err = |p: &str| Value::Error { prefix: p.into() };
        assert_eq!(
            values(&evs),
            vec![
                ok.clone(),
                err("WRONGTYPE"),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                err("SYNTAX"),
                ok.clone(),
                ok.clone(),
                ok.clone(),
                Value::Push,
                ok.clone(),
                Value::Reply { nested_error: Some("ERR".into()) },
            ]
        );
    }

    #[test]
    fn a_gap_inside_a_bulk_string_costs_nothing() {
        let mut r = Resp::new(Side::Replies);
        let mut out = Vec::new();
        // `$5000\r\n` + 5000 bytes + CRLF, then `+OK`: head 1024 bytes, tail 64.
        let mut bytes = b"$5000\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 5000));
        bytes.extend_from_slice(b"\r\n+OK\r\n");
        let len = bytes.len() as u64;
        r.feed(&bytes[..1024], &bytes[bytes.len() - 64..], len, 1u32, &mut out);
        assert_eq!(values(&out), vec![Value::Reply { nested_error: None }; 2]);
    }

    #[test]
    fn a_gap_over_a_header_loses_the_framing_until_restart() {
        let mut r = Resp::new(Side::Replies);
        let mut out = Vec::new();
        let mut bytes = b"*300\r\n".to_vec();
        for _ in 0..300 {
            bytes.extend_from_slice(b"$5\r\nhello\r\n");
        }
        let len = bytes.len() as u64;
        r.feed(&bytes[..1024], &bytes[bytes.len() - 64..], len, 1u32, &mut out);
        assert_eq!(out, vec![RespEvent::Lost]);
        assert!(r.is_lost());
        r.feed(b"+OK\r\n", b"", 5, 2, &mut out);
        assert_eq!(out.len(), 1, "ignored while lost");
        r.restart();
        r.feed(b"+OK\r\n", b"", 5, 3, &mut out);
        assert_eq!(values(&out[1..]), vec![Value::Reply { nested_error: None }]);
    }

    #[test]
    fn garbage_is_lost_never_a_panic() {
        let evs = read(Side::Replies, &[b"hello\r\n"]);
        assert_eq!(evs, vec![RespEvent::Lost]);
        let evs = read(Side::Replies, &[b"*x\r\n"]);
        assert_eq!(evs, vec![RespEvent::Lost]);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(b"*$+-:\r\n0123abc%|>!_"[(seed % 19) as usize]);
            }
            for side in [Side::Commands, Side::Replies] {
                let mut r = Resp::new(side);
                let mut out = Vec::new();
                r.feed(&buf, b"", buf.len() as u64 + seed % 3, 0u32, &mut out);
            }
        }
    }

    #[test]
    fn error_prefixes_never_quote_the_message() {
        assert_eq!(error_prefix(b"WRONGTYPE Operation against a key"), "WRONGTYPE");
        assert_eq!(error_prefix(b"ERR unknown command 'secret'"), "ERR");
        assert_eq!(error_prefix(b"secret value"), "ERR");
        assert_eq!(error_prefix(b""), "ERR");
    }
}
