//! A streaming reader of MySQL protocol packets over one direction of a captured connection,
//! with gaps.
//!
//! Every packet is a 3-byte little-endian payload length, a sequence id and the payload; a
//! payload of 2^24−1 bytes continues in the next packet (the reader joins them into one
//! packet). Lengths make the framing immune to a gap inside a packet; a gap that swallows a
//! header loses it: the reader reports [`WireEvent::Lost`] and ignores bytes until
//! [`Reader::restart`]. Only the first bytes of each payload are kept ([`Reader::new`]'s `keep`).

use crate::protocols::database::{Piece, pieces};

/// A payload this long continues in the next packet.
pub const MAX_PACKET: u32 = 0x00ff_ffff;

/// A packet: its sequence id, the true length of its payload, and its first bytes as far as
/// they were kept and captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<M> {
    pub seq: u8,
    pub len: u64,
    pub body: Vec<u8>,
    /// `body` is not the whole payload (a gap, or the cap).
    pub cut: bool,
    pub first: M,
    pub last: M,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireEvent<M> {
    Packet(Packet<M>),
    Lost,
}

#[derive(Clone, Debug)]
enum State<M> {
    Header { buf: [u8; 4], have: usize, first: Option<M>, cont: Option<Packet<M>> },
    Body { pkt: Packet<M>, remaining: u64, more: bool },
    Lost,
}

/// See the module docs.
pub struct Reader<M> {
    state: State<M>,
    keep: usize,
}

impl<M: Copy> Reader<M> {
    /// A reader that keeps at most `keep` bytes of each payload.
    pub fn new(keep: usize) -> Self {
        Self { state: State::Header { buf: [0; 4], have: 0, first: None, cont: None }, keep }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next bytes fed start a packet.
    pub fn restart(&mut self) {
        self.state = State::Header { buf: [0; 4], have: 0, first: None, cont: None };
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
            State::Body { remaining, pkt, .. } if n <= *remaining => {
                *remaining -= n;
                pkt.cut = true;
                pkt.last = meta;
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
                State::Header { buf, have, first, cont } => {
                    first.get_or_insert(meta);
                    let take = (4 - *have).min(b.len());
                    buf[*have..*have + take].copy_from_slice(&b[..take]);
                    *have += take;
                    b = &b[take..];
                    if *have < 4 {
                        return;
                    }
                    let plen = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]);
                    let seq = buf[3];
                    let first = first.unwrap_or(meta);
                    let pkt = match cont.take() {
                        Some(mut p) => {
                            p.len += u64::from(plen);
                            p.last = meta;
                            p
                        }
                        None => Packet { seq, len: u64::from(plen), body: Vec::new(), cut: false, first, last: meta },
                    };
                    self.state = State::Body { pkt, remaining: u64::from(plen), more: plen == MAX_PACKET };
                    if plen == 0 {
                        self.finish(out);
                    }
                }
                State::Body { pkt, remaining, .. } => {
                    let n = (*remaining).min(b.len() as u64) as usize;
                    let room = self.keep.saturating_sub(pkt.body.len());
                    pkt.body.extend_from_slice(&b[..n.min(room)]);
                    *remaining -= n as u64;
                    pkt.last = meta;
                    b = &b[n..];
                    if *remaining == 0 {
                        self.finish(out);
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<WireEvent<M>>) {
        let fresh = State::Header { buf: [0; 4], have: 0, first: None, cont: None };
        let State::Body { mut pkt, more, .. } = std::mem::replace(&mut self.state, fresh) else { return };
        if more {
            // The payload goes on in the next packet.
            self.state = State::Header { buf: [0; 4], have: 0, first: Some(pkt.first), cont: Some(pkt) };
            return;
        }
        pkt.cut |= (pkt.body.len() as u64) < pkt.len;
        out.push(WireEvent::Packet(pkt));
    }
}

/// A length-encoded integer at the start of `b`: `(value, bytes it took)`.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().rev().fold(0u64, |acc, &c| acc << 8 | u64::from(c)))
    };
    match *b.first()? {
        c @ 0..=0xfa => Some((u64::from(c), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// Splits at the first NUL byte: `(string, rest)`.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes()[..3].to_vec();
        v.push(seq);
        v.extend_from_slice(body);
        v
    }

    fn events(r: &mut Reader<u32>, head: &[u8], tail: &[u8], len: u64) -> Vec<(u8, u64, Vec<u8>)> {
        let mut out = Vec::new();
        r.feed(head, tail, len, 0, &mut out);
        out.into_iter()
            .map(|e| match e {
                WireEvent::Packet(p) => (p.seq, p.len, p.body),
                WireEvent::Lost => (0xff, 0, vec![]),
            })
            .collect()
    }

    #[test]
    fn packets_split_anywhere() {
        let all = [pkt(0, b"\x03SELECT 1"), pkt(1, b""), pkt(2, b"\x00\x00\x00\x02\x00\x00\x00")].concat();
        for cut in 0..all.len() {
            let mut r = Reader::new(64);
            let mut got = events(&mut r, &all[..cut], b"", cut as u64);
            got.extend(events(&mut r, &all[cut..], b"", (all.len() - cut) as u64));
            let seqs: Vec<u8> = got.iter().map(|g| g.0).collect();
            assert_eq!(seqs, vec![0, 1, 2], "cut at {cut}");
            assert_eq!(got[0].2, b"\x03SELECT 1".to_vec());
        }
    }

    #[test]
    fn gaps_inside_payloads_cost_nothing_over_headers_lose() {
        let mut r = Reader::new(8);
        let big = [pkt(1, &[7u8; 5000]), pkt(2, b"\xfe\x00\x00\x02\x00")].concat();
        let got = events(&mut r, &big[..1024], &big[big.len() - 64..], big.len() as u64);
        assert_eq!(got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), vec![(1, 5000), (2, 5)]);
        assert_eq!(got[1].2, b"\xfe\x00\x00\x02\x00".to_vec());
        let mut rows = Vec::new();
        for i in 0..100 {
            rows.extend(pkt(i, &[1u8; 30]));
        }
        let got = events(&mut r, &rows[..1024], &rows[rows.len() - 64..], rows.len() as u64);
        assert_eq!(got.last().map(|g| g.0), Some(0xff));
        assert!(r.is_lost());
        r.restart();
        assert_eq!(events(&mut r, &pkt(1, b"\x00"), b"", 5).len(), 1);
    }

    #[test]
    fn a_payload_of_max_length_goes_on_in_the_next_packet() {
        let mut r = Reader::new(4);
        let mut bytes = vec![0xff, 0xff, 0xff, 0];
        bytes.extend_from_slice(b"\x03SEL");
        let total = 4 + MAX_PACKET as u64 + 4 + 3;
        let tail = [&[0u8; 7][..], &[3, 0, 0, 1], b"abc"].concat();
        let got = events(&mut r, &bytes, &tail, total);
        assert_eq!(got, vec![(0, u64::from(MAX_PACKET) + 3, b"\x03SEL".to_vec())]);
    }

    #[test]
    fn length_encoded_integers() {
        assert_eq!(lenenc(&[0x05]), Some((5, 1)));
        assert_eq!(lenenc(&[0xfc, 0x01, 0x02]), Some((0x0201, 3)));
        assert_eq!(lenenc(&[0xfd, 1, 2, 3]), Some((0x030201, 4)));
        assert_eq!(lenenc(&[0xfe, 1, 0, 0, 0, 0, 0, 0, 0]), Some((1, 9)));
        assert_eq!(lenenc(&[0xfc, 1]), None);
        assert_eq!(lenenc(&[0xff]), None);
        assert_eq!(lenenc(&[]), None);
    }
}
