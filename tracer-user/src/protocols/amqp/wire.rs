//! A streaming reader of AMQP 0-9-1 frames over one direction of a captured connection, with
//! gaps, and the decoding of the few method arguments the spans need.
//!
//! Every frame is a type octet, a channel (u16), a size (u32, big-endian), `size` bytes of
//! payload and the frame-end octet `0xCE`. The client's protocol header (`AMQP 0 0 9 1`, eight
//! bytes) is skipped. Sizes make the framing immune to a gap inside a frame's payload (a large
//! message body); a gap that swallows a frame's header, or a captured frame end that is not
//! `0xCE`, loses the direction: the reader reports [`WireEvent::Lost`] and ignores bytes until
//! [`Reader::restart`].
//!
//! Only the first bytes of method frames and the leading fields of content headers are kept;
//! bodies and content properties (the application's headers) never are.

use tracer_common::classify::{AMQP_FRAME_END, AMQP_HEADER};

use crate::protocols::database::{Piece, pieces};

/// Frame types.
pub const METHOD: u8 = 1;
pub const HEADER: u8 = 2;
pub const BODY: u8 = 3;
pub const HEARTBEAT: u8 = 8;

/// Largest frame taken as real (a broker's `frame_max` is at most a few MiB in practice).
const MAX_FRAME: u32 = 16 << 20;
/// Bytes kept of a method frame's payload: the arguments the spans read come first.
const KEEP_METHOD: usize = 512;
/// Bytes kept of a content header: class, weight and body size, never the properties.
const KEEP_HEADER: usize = 12;

/// A frame: its type and channel, the true size of its payload, and the payload's first bytes
/// as far as they were kept and captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<M> {
    pub typ: u8,
    pub channel: u16,
    pub size: u32,
    pub payload: Vec<u8>,
    pub first: M,
    pub last: M,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireEvent<M> {
    Frame(Frame<M>),
    Lost,
}

#[derive(Clone, Debug)]
enum State<M> {
    /// Collecting a frame header (seven bytes, or the eight of the protocol header).
    Header {
        buf: Vec<u8>,
        first: Option<M>,
    },
    /// In a frame's payload; `remaining` counts the frame end too.
    Payload {
        frame: Frame<M>,
        remaining: u64,
        keep: usize,
    },
    Lost,
}

/// See the module docs.
pub struct Reader<M> {
    state: State<M>,
}

impl<M> Default for Reader<M> {
    fn default() -> Self {
        Self { state: State::Header { buf: Vec::new(), first: None } }
    }
}

/// Whether a transfer plausibly starts with a frame (or the protocol header): a known type and
/// a size within bounds, and the frame end where it must be when the transfer holds it.
pub fn frame_start(b: &[u8]) -> bool {
    if b.len() >= 8 && b[..8] == AMQP_HEADER {
        return true;
    }
    if b.len() < 7 || !matches!(b[0], METHOD | HEADER | BODY | HEARTBEAT) {
        return false;
    }
    let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
    size <= MAX_FRAME && b.get(7 + size as usize).is_none_or(|&e| e == AMQP_FRAME_END)
}

impl<M: Copy> Reader<M> {
    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next bytes fed start a frame.
    pub fn restart(&mut self) {
        self.state = State::Header { buf: Vec::new(), first: None };
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
            // A gap inside the payload, possibly over the frame end too: framing holds.
            State::Payload { frame, remaining, .. } if n <= *remaining => {
                *remaining -= n;
                frame.last = meta;
                if *remaining == 0 {
                    self.finish(out);
                }
            }
            State::Lost => {}
            _ => self.lose(out),
        }
    }

    fn finish(&mut self, out: &mut Vec<WireEvent<M>>) {
        if let State::Payload { frame, .. } =
            std::mem::replace(&mut self.state, State::Header { buf: Vec::new(), first: None })
        {
            out.push(WireEvent::Frame(frame));
        }
    }

    fn bytes(&mut self, mut b: &[u8], meta: M, out: &mut Vec<WireEvent<M>>) {
        while !b.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Header { buf, first } => {
                    let first = *first.get_or_insert(meta);
                    let want = if buf.first() == Some(&b'A') { AMQP_HEADER.len() } else { 7 };
                    let take = (want - buf.len()).min(b.len());
                    buf.extend_from_slice(&b[..take]);
                    b = &b[take..];
                    // The protocol header is eight bytes; every frame header seven.
                    let want = if buf[0] == b'A' { AMQP_HEADER.len() } else { 7 };
                    if buf.len() < want {
                        continue;
                    }
                    if buf[0] == b'A' {
                        if buf[..] != AMQP_HEADER {
                            self.lose(out);
                            return;
                        }
                        self.restart();
                        continue;
                    }
                    let typ = buf[0];
                    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
                    if !matches!(typ, METHOD | HEADER | BODY | HEARTBEAT) || size > MAX_FRAME {
                        self.lose(out);
                        return;
                    }
                    let keep = match typ {
                        METHOD => KEEP_METHOD,
                        HEADER => KEEP_HEADER,
                        _ => 0,
                    };
                    let channel = u16::from_be_bytes([buf[1], buf[2]]);
                    self.state = State::Payload {
                        frame: Frame { typ, channel, size, payload: Vec::new(), first, last: meta },
                        remaining: u64::from(size) + 1,
                        keep,
                    };
                }
                State::Payload { frame, remaining, keep } => {
                    frame.last = meta;
                    let take = (*remaining).min(b.len() as u64) as usize;
                    let chunk = &b[..take];
                    b = &b[take..];
                    *remaining -= take as u64;
                    // The payload's bytes in this chunk (the last one may be the frame end).
                    let ends = *remaining == 0;
                    let body = if ends { &chunk[..take - 1] } else { chunk };
                    let room = keep.saturating_sub(frame.payload.len());
                    let seen = frame.size as usize - (*remaining as usize).saturating_sub(1) - body.len();
                    if seen == frame.payload.len() {
                        frame.payload.extend_from_slice(&body[..room.min(body.len())]);
                    }
                    if ends {
                        if chunk[take - 1] != AMQP_FRAME_END {
                            self.lose(out);
                            return;
                        }
                        self.finish(out);
                    }
                }
            }
        }
    }
}

/// A checked cursor over a method's arguments.
pub struct Args<'a> {
    b: &'a [u8],
    /// Octets of packed bits already read from (AMQP packs consecutive bits into one octet).
    bits: Option<(u8, u8)>,
}

impl<'a> Args<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, bits: None }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        self.bits = None;
        let (h, t) = (self.b.get(..n)?, self.b.get(n..)?);
        self.b = t;
        Some(h)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// A short string (a length octet, then the bytes), when it is UTF-8.
    pub fn shortstr(&mut self) -> Option<&'a str> {
        let n = *self.take(1)?.first()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }

    /// The next bit: consecutive bits share an octet, low bit first.
    pub fn bit(&mut self) -> Option<bool> {
        let (octet, next) = match self.bits {
            Some((o, n)) if n < 8 => (o, n),
            _ => (*self.take(1)?.first()?, 0),
        };
        self.bits = Some((octet, next + 1));
        Some(octet >> next & 1 == 1)
    }
}

/// The name of a reply code (AMQP 0-9-1's constants, as `error.type`).
pub fn reply_code_name(code: u16) -> String {
    let name = match code {
        311 => "content-too-large",
        312 => "no-route",
        313 => "no-consumers",
        320 => "connection-forced",
        402 => "invalid-path",
        403 => "access-refused",
        404 => "not-found",
        405 => "resource-locked",
        406 => "precondition-failed",
        501 => "frame-error",
        502 => "syntax-error",
        503 => "command-invalid",
        504 => "channel-error",
        505 => "unexpected-frame",
        506 => "resource-error",
        530 => "not-allowed",
        540 => "not-implemented",
        541 => "internal-error",
        other => return other.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![typ];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(AMQP_FRAME_END);
        f
    }

    fn frames(r: &mut Reader<u8>, b: &[u8], len: u64, meta: u8) -> Vec<WireEvent<u8>> {
        let mut out = Vec::new();
        r.feed(b, &[], len, meta, &mut out);
        out
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut all = AMQP_HEADER.to_vec();
        all.extend(frame(METHOD, 1, &[0, 60, 0, 40, 0, 0, 1, b'x']));
        all.extend(frame(BODY, 1, b"hello"));
        for cut in 0..all.len() {
            let mut r = Reader::default();
            let mut out = frames(&mut r, &all[..cut], cut as u64, 1);
            out.extend(frames(&mut r, &all[cut..], (all.len() - cut) as u64, 2));
            let got: Vec<_> = out
                .iter()
                .map(|e| match e {
                    WireEvent::Frame(f) => (f.typ, f.channel, f.size, f.payload.clone()),
                    WireEvent::Lost => panic!("lost at cut {cut}"),
                })
                .collect();
            assert_eq!(got, vec![(METHOD, 1, 8, vec![0, 60, 0, 40, 0, 0, 1, b'x']), (BODY, 1, 5, vec![])], "{cut}");
        }
    }

    #[test]
    fn a_gap_in_a_body_keeps_framing_and_a_bad_end_loses_it() {
        let body = vec![7u8; 5000];
        let mut all = frame(BODY, 3, &body);
        all.extend(frame(HEARTBEAT, 0, &[]));
        let mut r = Reader::default();
        let mut out = Vec::new();
        r.feed(&all[..1024], &all[all.len() - 64..], all.len() as u64, 1, &mut out);
        assert!(matches!(&out[..], [WireEvent::Frame(a), WireEvent::Frame(b)] if a.size == 5000 && b.typ == HEARTBEAT));
        let mut bad = frame(METHOD, 1, &[0, 10, 0, 11]);
        *bad.last_mut().unwrap() = 0;
        assert_eq!(frames(&mut r, &bad, bad.len() as u64, 2), vec![WireEvent::Lost]);
        assert!(r.is_lost());
        assert!(frame_start(&frame(METHOD, 1, &[0, 10, 0, 11])));
        assert!(!frame_start(&bad));
        assert!(!frame_start(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn arguments_and_packed_bits() {
        let mut a = Args::new(&[0, 5, 3, b'a', b'b', b'c', 0b101, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(a.u16(), Some(5));
        assert_eq!(a.shortstr(), Some("abc"));
        assert_eq!((a.bit(), a.bit(), a.bit()), (Some(true), Some(false), Some(true)));
        assert_eq!(a.u64(), Some(9));
        assert_eq!(a.u16(), None);
        assert_eq!(reply_code_name(404), "not-found");
        assert_eq!(reply_code_name(999), "999");
    }
}
