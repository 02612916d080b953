//! HTTP/2 framing (RFC 9113, section 4) over one direction of a captured byte stream.
//!
//! The capture hands over each transfer as pieces: its head, a gap of known length (bytes the
//! kernel did not copy), its tail. The walker keeps frame boundaries across transfers and
//! gaps: the payload of a frame may fall into a gap (DATA usually does, and costs nothing);
//! when a header block (HEADERS, CONTINUATION, PUSH_PROMISE) does, the block is reported lost,
//! and when a frame header does, framing is lost until a later transfer starts with a
//! plausible frame header ([`plausible`]). Either loss leaves the direction's HPACK table
//! unknown, which the caller must take into account (see `super`).

use tracer_common::H2_PREFACE;

use crate::protocols::database::Piece;
use crate::protocols::exchange::Stamp;

pub const FRAME_HEADER: usize = 9;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
/// The ACK flag of SETTINGS and PING.
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// The largest frame the walker accepts when it looks for framing again: the default
/// SETTINGS_MAX_FRAME_SIZE (peers rarely raise it; a larger frame is still followed once in
/// step, up to the protocol's limit).
pub const RESYNC_MAX_FRAME: u32 = 16_384;
/// The largest header block kept for decoding; a larger one counts as lost.
pub const MAX_BLOCK: usize = 256 * 1024;

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; FRAME_HEADER]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Whether `b` looks like the header of a frame a peer would send: a known type, a length
/// within the default maximum (and the type's fixed length where it has one), the stream id
/// its type requires, no reserved bit.
pub fn plausible(b: &[u8; FRAME_HEADER]) -> bool {
    let h = FrameHeader::parse(b);
    if b[5] & 0x80 != 0 || h.len > RESYNC_MAX_FRAME {
        return false;
    }
    let on_stream = h.stream != 0;
    match h.kind {
        DATA | HEADERS | CONTINUATION | PUSH_PROMISE => on_stream,
        PRIORITY => on_stream && h.len == 5,
        RST_STREAM => on_stream && h.len == 4,
        SETTINGS => !on_stream && h.len.is_multiple_of(6) && h.flags & !1 == 0,
        PING => !on_stream && h.len == 8 && h.flags & !1 == 0,
        GOAWAY => !on_stream && h.len >= 8,
        WINDOW_UPDATE => h.len == 4,
        _ => false,
    }
}

/// What the walker found, in stream order. `at` is the transfer that completed the frame (for
/// a header block, its last frame); `first` the transfer that carried its first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete header block (HEADERS and its CONTINUATIONs), padding and priority removed.
    /// `push`: a PUSH_PROMISE's block (decoded only to keep the HPACK table in step).
    Headers {
        stream: u32,
        end_stream: bool,
        push: bool,
        block: Vec<u8>,
        first: Stamp,
        at: Stamp,
    },
    /// A header block some of whose bytes were not captured: the HPACK table is unknown from
    /// here on.
    HeadersLost {
        stream: u32,
        end_stream: bool,
        push: bool,
        first: Stamp,
        at: Stamp,
    },
    /// A DATA frame of `len` payload bytes (padding included).
    Data {
        stream: u32,
        end_stream: bool,
        len: u32,
        at: Stamp,
    },
    Reset {
        stream: u32,
        code: u32,
        at: Stamp,
    },
    /// A frame header fell into a gap (or the bytes were not HTTP/2): frames of any stream may
    /// pass unseen until framing is found again.
    Lost,
    /// A transfer starts with a plausible frame header again.
    Resynced,
}

/// A frame whose payload is being read.
struct Frame {
    h: FrameHeader,
    left: u32,
    /// Its payload is kept (header blocks, RST_STREAM).
    keep: bool,
    buf: Vec<u8>,
    /// Some of the kept payload fell into a gap.
    broken: bool,
    first: Stamp,
}

/// A header block waiting for CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    push: bool,
    buf: Vec<u8>,
    broken: bool,
    first: Stamp,
}

/// Frame walker of one direction. See the module docs.
pub struct Walker {
    /// Preface bytes still expected before the first frame.
    preface: usize,
    hdr: [u8; FRAME_HEADER],
    hdr_len: usize,
    cur: Option<Frame>,
    block: Option<Block>,
    lost: bool,
}

impl Walker {
    /// A walker at the start of a connection; `preface`: this direction carries the client's
    /// connection preface first.
    pub fn new(preface: bool) -> Self {
        Self {
            preface: if preface { H2_PREFACE.len() } else { 0 },
            hdr: [0; FRAME_HEADER],
            hdr_len: 0,
            cur: None,
            block: None,
            lost: false,
        }
    }

    /// A walker that has not seen the start of the stream: it waits for a plausible frame
    /// header at the start of a transfer.
    pub fn lost() -> Self {
        Self { lost: true, ..Self::new(false) }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// One transfer of `len` bytes: `head`, then (when longer) a gap, then `tail`.
    pub fn feed(&mut self, head: &[u8], tail: &[u8], len: u64, stamp: Stamp, out: &mut Vec<FrameEvent>) {
        if self.lost {
            match head.first_chunk::<FRAME_HEADER>() {
                Some(h) if plausible(h) => {
                    self.lost = false;
                    self.hdr_len = 0;
                    self.cur = None;
                    self.block = None;
                    out.push(FrameEvent::Resynced);
                }
                _ => return,
            }
        }
        for piece in super::super::database::pieces(head, tail, len) {
            if self.lost {
                return;
            }
            match piece {
                Piece::Bytes(b) => self.bytes(b, stamp, out),
                Piece::Gap(0) => {}
                Piece::Gap(n) => self.gap(n, stamp, out),
            }
        }
    }

    fn lose(&mut self, out: &mut Vec<FrameEvent>, at: Stamp) {
        if let Some(b) = self.block.take() {
            out.push(FrameEvent::HeadersLost {
                stream: b.stream,
                end_stream: b.end_stream,
                push: b.push,
                first: b.first,
                at,
            });
        }
        if let Some(f) = self.cur.take()
            && matches!(f.h.kind, HEADERS | PUSH_PROMISE)
        {
            out.push(FrameEvent::HeadersLost {
                stream: f.h.stream,
                end_stream: f.h.flags & END_STREAM != 0,
                push: f.h.kind == PUSH_PROMISE,
                first: f.first,
                at,
            });
        }
        self.hdr_len = 0;
        self.lost = true;
        out.push(FrameEvent::Lost);
    }

    fn gap(&mut self, mut n: u64, stamp: Stamp, out: &mut Vec<FrameEvent>) {
        if self.preface > 0 || self.hdr_len > 0 {
            self.lose(out, stamp);
            return;
        }
        if let Some(f) = self.cur.as_mut() {
            let take = n.min(u64::from(f.left));
            f.left -= take as u32;
            n -= take;
            if f.keep && take > 0 {
                f.broken = true;
            }
            if f.left == 0 {
                self.finish(stamp, out);
            }
        }
        if n > 0 {
            // The next frame header is in the gap.
            self.lose(out, stamp);
        }
    }

    fn bytes(&mut self, mut b: &[u8], stamp: Stamp, out: &mut Vec<FrameEvent>) {
        while !b.is_empty() && !self.lost {
            if self.preface > 0 {
                let at = H2_PREFACE.len() - self.preface;
                let n = self.preface.min(b.len());
                if b[..n] != H2_PREFACE[at..at + n] {
                    self.preface = 0;
                    self.lose(out, stamp);
                    return;
                }
                self.preface -= n;
                b = &b[n..];
                continue;
            }
            if let Some(f) = self.cur.as_mut() {
                let n = (f.left as usize).min(b.len());
                if f.keep && !f.broken {
                    if f.buf.len() + n > MAX_BLOCK {
                        f.broken = true;
                        f.buf = Vec::new();
                    } else {
                        f.buf.extend_from_slice(&b[..n]);
                    }
                }
                f.left -= n as u32;
                b = &b[n..];
                if f.left == 0 {
                    self.finish(stamp, out);
                }
                continue;
            }
            let n = (FRAME_HEADER - self.hdr_len).min(b.len());
            self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&b[..n]);
            self.hdr_len += n;
            b = &b[n..];
            if self.hdr_len < FRAME_HEADER {
                continue;
            }
            self.hdr_len = 0;
            let h = FrameHeader::parse(&self.hdr);
            if self.block.is_some() != (h.kind == CONTINUATION) {
                // A header block must go on with CONTINUATION frames only, and a CONTINUATION
                // must follow one: these are not the frames they seemed.
                self.lose(out, stamp);
                return;
            }
            let keep = matches!(h.kind, HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM);
            self.cur = Some(Frame { h, left: h.len, keep, buf: Vec::new(), broken: false, first: stamp });
            if h.len == 0 {
                self.finish(stamp, out);
            }
        }
    }

    /// The current frame's payload is complete.
    fn finish(&mut self, at: Stamp, out: &mut Vec<FrameEvent>) {
        let Some(f) = self.cur.take() else { return };
        let h = f.h;
        match h.kind {
            DATA => {
                out.push(FrameEvent::Data { stream: h.stream, end_stream: h.flags & END_STREAM != 0, len: h.len, at })
            }
            RST_STREAM => {
                let code = match f.buf.first_chunk::<4>() {
                    Some(c) if !f.broken => u32::from_be_bytes(*c),
                    _ => 0,
                };
                out.push(FrameEvent::Reset { stream: h.stream, code, at });
            }
            HEADERS | PUSH_PROMISE => {
                let fragment = if f.broken { None } else { fragment(&h, &f.buf) };
                // A PUSH_PROMISE's block is decoded only to keep the table in step.
                let block = Block {
                    stream: h.stream,
                    end_stream: h.kind == HEADERS && h.flags & END_STREAM != 0,
                    push: h.kind == PUSH_PROMISE,
                    broken: fragment.is_none(),
                    buf: fragment.map(<[u8]>::to_vec).unwrap_or_default(),
                    first: f.first,
                };
                self.block = Some(block);
                if h.flags & END_HEADERS != 0 {
                    self.end_block(at, out);
                }
            }
            CONTINUATION => {
                if let Some(b) = self.block.as_mut() {
                    if f.broken || b.buf.len() + f.buf.len() > MAX_BLOCK {
                        b.broken = true;
                        b.buf = Vec::new();
                    } else if !b.broken {
                        b.buf.extend_from_slice(&f.buf);
                    }
                    if h.flags & END_HEADERS != 0 {
                        self.end_block(at, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn end_block(&mut self, at: Stamp, out: &mut Vec<FrameEvent>) {
        let Some(b) = self.block.take() else { return };
        out.push(if b.broken {
            FrameEvent::HeadersLost { stream: b.stream, end_stream: b.end_stream, push: b.push, first: b.first, at }
        } else {
            FrameEvent::Headers {
                stream: b.stream,
                end_stream: b.end_stream,
                push: b.push,
                block: b.buf,
                first: b.first,
                at,
            }
        });
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload (padding, priority and the
/// promised stream id removed); `None` when the payload is malformed.
fn fragment<'a>(h: &FrameHeader, p: &'a [u8]) -> Option<&'a [u8]> {
    let mut start = 0usize;
    let mut end = p.len();
    if h.flags & PADDED != 0 {
        let pad = usize::from(*p.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if h.kind == HEADERS && h.flags & PRIORITY_FLAG != 0 {
        start += 5;
    }
    if h.kind == PUSH_PROMISE {
        start += 4;
    }
    p.get(start..end)
}
