//! A streaming reader of Memcached's text protocol over one direction of a captured connection,
//! with gaps: lines (`\r\n`-terminated) and the data blocks whose length a line announced.
//!
//! A gap inside a data block costs nothing; a gap anywhere else (inside a line) loses the
//! framing: the reader reports [`TextEvent::Lost`] and ignores bytes until
//! [`Reader::restart`]. Data blocks are never copied.

use crate::protocols::database::{Piece, pieces};

/// Longest line taken as real (memcached's own key limit is 250 bytes; a line has a few).
pub const MAX_LINE: usize = 2048;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextEvent<M> {
    /// A line without its `\r\n`, and the transfers of its first and last byte.
    Line {
        line: Vec<u8>,
        first: M,
        last: M,
    },
    /// A data block (and its `\r\n`) ended.
    Block {
        last: M,
    },
    Lost,
}

#[derive(Clone, Debug)]
enum State<M> {
    Line {
        buf: Vec<u8>,
        first: Option<M>,
    },
    /// Bytes of a data block left, with its `\r\n`.
    Block(u64),
    Lost,
}

/// See the module docs.
pub struct Reader<M> {
    state: State<M>,
}

impl<M: Copy> Default for Reader<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Copy> Reader<M> {
    pub fn new() -> Self {
        Self { state: State::Line { buf: Vec::new(), first: None } }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next bytes fed start a line.
    pub fn restart(&mut self) {
        self.state = State::Line { buf: Vec::new(), first: None };
    }

    /// The line just reported announced a data block of `n` bytes (its `\r\n` follows).
    pub fn expect_block(&mut self, n: u64) {
        self.state = State::Block(n.saturating_add(2));
    }

    /// Feeds one transfer; `on` sees every event as it happens (a line's handler may call
    /// [`Reader::expect_block`] before the next bytes are read).
    pub fn feed(&mut self, head: &[u8], tail: &[u8], len: u64, meta: M, on: &mut dyn FnMut(&mut Self, TextEvent<M>)) {
        for p in pieces(head, tail, len) {
            match p {
                Piece::Bytes(b) => self.bytes(b, meta, on),
                Piece::Gap(0) => {}
                Piece::Gap(n) => match &mut self.state {
                    State::Block(left) if n <= *left => {
                        *left -= n;
                        if *left == 0 {
                            self.restart();
                            on(self, TextEvent::Block { last: meta });
                        }
                    }
                    State::Lost => {}
                    _ => self.lose(on),
                },
            }
        }
    }

    fn lose(&mut self, on: &mut dyn FnMut(&mut Self, TextEvent<M>)) {
        if !self.is_lost() {
            self.state = State::Lost;
            on(self, TextEvent::Lost);
        }
    }

    fn bytes(&mut self, mut b: &[u8], meta: M, on: &mut dyn FnMut(&mut Self, TextEvent<M>)) {
        while !b.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Block(left) => {
                    let n = (*left).min(b.len() as u64);
                    *left -= n;
                    b = &b[n as usize..];
                    if *left == 0 {
                        self.restart();
                        on(self, TextEvent::Block { last: meta });
                    }
                }
                State::Line { buf, first } => {
                    first.get_or_insert(meta);
                    match b.iter().position(|&c| c == b'\n') {
                        Some(i) => {
                            buf.extend_from_slice(&b[..i]);
                            b = &b[i + 1..];
                            let mut line = std::mem::take(buf);
                            let first = first.take().unwrap_or(meta);
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            if line.len() > MAX_LINE {
                                return self.lose(on);
                            }
                            on(self, TextEvent::Line { line, first, last: meta });
                        }
                        None => {
                            buf.extend_from_slice(b);
                            if buf.len() > MAX_LINE {
                                return self.lose(on);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut Reader<u8>, head: &[u8], tail: &[u8], len: u64) -> Vec<String> {
        let mut out = Vec::new();
        r.feed(head, tail, len, 0, &mut |r, ev| match ev {
            TextEvent::Line { line, .. } => {
                let l = String::from_utf8_lossy(&line).into_owned();
                if let Some(n) = l.split(' ').nth(3).and_then(|n| n.parse::<u64>().ok()) {
                    r.expect_block(n);
                }
                out.push(l);
            }
            TextEvent::Block { .. } => out.push("<block>".into()),
            TextEvent::Lost => out.push("<lost>".into()),
        });
        out
    }

    #[test]
    fn lines_and_blocks_split_anywhere() {
        let all = b"VALUE k 0 5\r\nab\r\nc\r\nEND\r\n";
        for cut in 0..all.len() {
            let mut r = Reader::new();
            let mut got = run(&mut r, &all[..cut], b"", cut as u64);
            got.extend(run(&mut r, &all[cut..], b"", (all.len() - cut) as u64));
            assert_eq!(got, ["VALUE k 0 5", "<block>", "END"], "cut at {cut}");
        }
    }

    #[test]
    fn a_gap_in_a_block_costs_nothing_in_a_line_loses() {
        let mut v = b"VALUE k 0 3000\r\n".to_vec();
        v.extend(vec![b'x'; 3000]);
        v.extend_from_slice(b"\r\nEND\r\n");
        let mut r = Reader::new();
        assert_eq!(run(&mut r, &v[..1024], &v[v.len() - 64..], v.len() as u64), ["VALUE k 0 3000", "<block>", "END"]);
        let lines = b"STAT a 1\r\n".repeat(300);
        let mut r = Reader::new();
        let got = run(&mut r, &lines[..1024], &lines[lines.len() - 64..], lines.len() as u64);
        assert_eq!(got.last().map(String::as_str), Some("<lost>"));
        assert!(r.is_lost());
        r.restart();
        assert_eq!(run(&mut r, b"END\r\n", b"", 5), ["END"]);
    }

    #[test]
    fn an_endless_line_loses() {
        let mut r = Reader::new();
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(run(&mut r, &long, b"", long.len() as u64), ["<lost>"]);
    }
}
