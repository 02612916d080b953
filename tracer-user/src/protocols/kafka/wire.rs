//! Kafka's wire format, the few fields the agent reads: a streaming reader of size-prefixed
//! messages over one direction of a captured connection (with gaps), a checked cursor over the
//! protocol's primitive types, and decoders of the request and response headers, Produce,
//! Fetch and Metadata, and record batch headers.
//!
//! Decoded by hand rather than with a codec crate: the agent needs about a dozen fields of
//! three messages, must stop cleanly wherever the capture was cut (a codec decodes a whole
//! message or fails), and must never copy a record's key, value or headers (a codec builds
//! them all).
//!
//! Versions follow the protocol's message definitions: "flexible" versions (compact strings,
//! arrays and bytes, tagged fields) from Produce v9, Fetch v12 and Metadata v9; topic ids in
//! place of names from Produce v13 and Fetch v13; a response header v1 (tagged fields after
//! the correlation id) for flexible versions.

pub use super::topics::{TopicRef, Uuid};
use crate::protocols::database::{Piece, pieces};

/// Produce.
pub const PRODUCE: i16 = 0;
/// Fetch.
pub const FETCH: i16 = 1;
/// Metadata.
pub const METADATA: i16 = 3;

/// Produce versions decoded (brokers since Kafka 4.0 serve 3 and later).
pub const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=13;
/// Fetch versions decoded (brokers since Kafka 4.0 serve 4 and later; Kafka 4.1 serves 18,
/// whose response is laid out as 17's, and franz-go 1.22 asks for it).
pub const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=18;
/// Metadata versions decoded.
pub const METADATA_VERSIONS: std::ops::RangeInclusive<i16> = 0..=13;

/// Largest message taken as real (brokers refuse requests over 100 MiB by default).
pub const MAX_MESSAGE: u64 = 100 << 20;

/// Whether version `v` of API `key` is flexible.
pub fn flexible(key: i16, v: i16) -> bool {
    match key {
        PRODUCE => v >= 9,
        FETCH => v >= 12,
        METADATA => v >= 9,
        _ => false,
    }
}

/// The bytes were cut before the field ended, or a length was impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Kafka message cut or malformed at byte {at}")]
pub struct Short {
    pub at: usize,
}

/// A checked cursor over a message's kept bytes.
pub struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn short(&self) -> Short {
        Short { at: self.at }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or(self.short())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Skips `n` bytes (a length read from the message, hence `u64`).
    pub fn skip(&mut self, n: u64) -> Result<(), Short> {
        let n = usize::try_from(n).map_err(|_| self.short())?;
        self.take(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn i8(&mut self) -> Result<i8, Short> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Result<i16, Short> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, Short> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, Short> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn uuid(&mut self) -> Result<Uuid, Short> {
        self.array()
    }

    pub fn uvarint(&mut self) -> Result<u64, Short> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            let b = self.array::<1>()?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.short())
    }

    /// A length: `i32` (−1: null), or in a flexible version an unsigned varint of length + 1
    /// (0: null). `None` for null.
    fn len(&mut self, flexible: bool) -> Result<Option<u64>, Short> {
        if flexible {
            let n = self.uvarint()?;
            Ok(n.checked_sub(1))
        } else {
            let n = self.i32()?;
            if n < -1 {
                return Err(self.short());
            }
            Ok(u64::try_from(n).ok())
        }
    }

    /// A string's length: `i16` (−1: null), or a compact length in a flexible version.
    fn str_len(&mut self, flexible: bool) -> Result<Option<u64>, Short> {
        if flexible {
            self.len(true)
        } else {
            let n = self.i16()?;
            if n < -1 {
                return Err(self.short());
            }
            Ok(u64::try_from(n).ok())
        }
    }

    /// A (nullable) string's bytes.
    pub fn string(&mut self, flexible: bool) -> Result<Option<&'a [u8]>, Short> {
        match self.str_len(flexible)? {
            Some(n) => Ok(Some(self.take(usize::try_from(n).map_err(|_| self.short())?)?)),
            None => Ok(None),
        }
    }

    /// Skips a (nullable) string.
    pub fn skip_string(&mut self, flexible: bool) -> Result<(), Short> {
        self.string(flexible).map(|_| ())
    }

    /// A (nullable) byte field's length; its bytes follow.
    pub fn bytes_len(&mut self, flexible: bool) -> Result<Option<u64>, Short> {
        self.len(flexible)
    }

    /// An array's element count (null counts as empty).
    pub fn array_len(&mut self, flexible: bool) -> Result<u64, Short> {
        let n = self.len(flexible)?.unwrap_or(0);
        // Every element takes at least one byte.
        if n > (self.b.len() - self.at) as u64 {
            return Err(self.short());
        }
        Ok(n)
    }

    /// Skips tagged fields (flexible versions only).
    pub fn tags(&mut self, flexible: bool) -> Result<(), Short> {
        if !flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size)?;
        }
        Ok(())
    }

    /// Skips an array of `i32`.
    pub fn skip_i32s(&mut self, flexible: bool) -> Result<(), Short> {
        let n = self.array_len(flexible)?;
        self.skip(n.saturating_mul(4))
    }

    /// The bytes left.
    pub fn rest(&self) -> &'a [u8] {
        &self.b[self.at..]
    }
}

/// A request's header (v1, or v2 in flexible versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads a request's header; the cursor is left at its body.
pub fn request_header(c: &mut Cursor<'_>) -> Result<RequestHeader, Short> {
    let api_key = c.i16()?;
    let api_version = c.i16()?;
    let correlation_id = c.i32()?;
    // The client id is a (non-compact) nullable string even in header v2.
    c.skip_string(false)?;
    c.tags(flexible(api_key, api_version))?;
    Ok(RequestHeader { api_key, api_version, correlation_id })
}

fn topic(c: &mut Cursor<'_>, by_id: bool, flexible: bool) -> Result<TopicRef, Short> {
    if by_id {
        return Ok(TopicRef::Id(c.uuid()?));
    }
    let name = c.string(flexible)?.unwrap_or_default();
    Ok(TopicRef::Name(String::from_utf8_lossy(name).into_owned()))
}

/// What the record batches of a `records` field hold: the first batch's base offset, the
/// last offset of the last batch seen, and the number of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records {
    pub base_offset: i64,
    pub last_offset: i64,
    pub count: u64,
}

/// Bytes of a record batch header (magic 2) up to and including its record count.
pub const BATCH_HEADER: usize = 61;
/// Bytes before a batch's `batch_length` field's end: base offset and the length itself.
const BATCH_LOG_OVERHEAD: u64 = 12;

/// Reads the record batch headers of a `records` field whose captured bytes are `b` (cut
/// anywhere): only batches whose header was captured count; a batch of another magic than 2
/// (the message formats before Kafka 0.11, which brokers since Kafka 4.0 refuse) ends the
/// walk. Keys, values and headers are never read.
pub fn record_batches(b: &[u8]) -> Option<Records> {
    let mut c = Cursor::new(b);
    let mut out: Option<Records> = None;
    while c.rest().len() >= BATCH_HEADER {
        let mut h = Cursor::new(c.rest());
        let base_offset = h.i64().ok()?;
        let batch_length = h.i32().ok()?;
        let _leader_epoch = h.i32().ok()?;
        let magic = h.i8().ok()?;
        if magic != 2 || batch_length < (BATCH_HEADER as i32 - BATCH_LOG_OVERHEAD as i32) {
            break;
        }
        h.skip(4 + 2).ok()?; // crc, attributes
        let last_offset_delta = h.i32().ok()?;
        h.skip(8 + 8 + 8 + 2 + 4).ok()?; // timestamps, producer id and epoch, base sequence
        let count = h.i32().ok()?;
        if base_offset < 0 || last_offset_delta < 0 || count < 0 {
            break;
        }
        let last = base_offset.saturating_add(i64::from(last_offset_delta));
        let r = out.get_or_insert(Records { base_offset, last_offset: last, count: 0 });
        r.last_offset = r.last_offset.max(last);
        r.count += count as u64;
        if c.skip(BATCH_LOG_OVERHEAD + batch_length as u64).is_err() {
            break;
        }
    }
    out
}

/// A `records` field: reads the batches the capture kept (the field may run past `c`'s end)
/// and moves past it. `Err` when the field's end was not captured (the caller stops there,
/// keeping what it has).
fn records(c: &mut Cursor<'_>, flexible: bool) -> (Option<Records>, Result<(), Short>) {
    let n = match c.bytes_len(flexible) {
        Ok(Some(n)) => n,
        Ok(None) => return (None, Ok(())),
        Err(e) => return (None, Err(e)),
    };
    let avail = c.rest();
    let kept = &avail[..usize::try_from(n).map_or(avail.len(), |n| n.min(avail.len()))];
    (record_batches(kept), c.skip(n))
}

/// One partition of a Produce request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducePartition {
    pub topic: TopicRef,
    pub partition: i32,
    /// Records in the partition's batches (0 when their header was not captured).
    pub count: u64,
}

/// A Produce request: its acks and the partitions decoded before the capture ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest {
    pub acks: i16,
    pub partitions: Vec<ProducePartition>,
    /// The request was decoded to its end.
    pub complete: bool,
}

/// Decodes a Produce request's body (version `v`), as far as it was captured.
pub fn produce_request(c: &mut Cursor<'_>, v: i16) -> Result<ProduceRequest, Short> {
    let flex = flexible(PRODUCE, v);
    c.skip_string(flex)?; // transactional id
    let acks = c.i16()?;
    c.i32()?; // timeout
    let mut req = ProduceRequest { acks, partitions: Vec::new(), complete: false };
    let topics = c.array_len(flex)?;
    for _ in 0..topics {
        let Ok(t) = topic(c, v >= 13, flex) else { return Ok(req) };
        let Ok(parts) = c.array_len(flex) else { return Ok(req) };
        for _ in 0..parts {
            let Ok(partition) = c.i32() else { return Ok(req) };
            let (recs, end) = records(c, flex);
            req.partitions.push(ProducePartition { topic: t.clone(), partition, count: recs.map_or(0, |r| r.count) });
            if end.and_then(|()| c.tags(flex)).is_err() {
                return Ok(req);
            }
        }
        if c.tags(flex).is_err() {
            return Ok(req);
        }
    }
    req.complete = true;
    Ok(req)
}

/// One partition of a Produce response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceResult {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    pub base_offset: i64,
}

/// Decodes a Produce response's body (version `v`, after the response header) as far as it
/// was captured.
pub fn produce_response(c: &mut Cursor<'_>, v: i16) -> Vec<ProduceResult> {
    let flex = flexible(PRODUCE, v);
    let mut out = Vec::new();
    let _ = (|| -> Result<(), Short> {
        let topics = c.array_len(flex)?;
        for _ in 0..topics {
            let t = topic(c, v >= 13, flex)?;
            let parts = c.array_len(flex)?;
            for _ in 0..parts {
                let partition = c.i32()?;
                let error_code = c.i16()?;
                let base_offset = c.i64()?;
                out.push(ProduceResult { topic: t.clone(), partition, error_code, base_offset });
                c.i64()?; // log append time (v2+)
                if v >= 5 {
                    c.i64()?; // log start offset
                }
                if v >= 8 {
                    let errors = c.array_len(flex)?;
                    for _ in 0..errors {
                        c.i32()?;
                        c.skip_string(flex)?;
                        c.tags(flex)?;
                    }
                    c.skip_string(flex)?; // error message
                }
                c.tags(flex)?;
            }
            c.tags(flex)?;
        }
        Ok(())
    })();
    out
}

/// One partition of a Fetch response that returned records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResult {
    pub topic: TopicRef,
    pub partition: i32,
    pub error_code: i16,
    /// The batches the capture kept (`None`: no records, or their header was not captured).
    pub records: Option<Records>,
}

/// Decodes a Fetch response's body (version `v`, after the response header) as far as it was
/// captured: every partition, with or without records.
pub fn fetch_response(c: &mut Cursor<'_>, v: i16) -> Vec<FetchResult> {
    let flex = flexible(FETCH, v);
    let mut out = Vec::new();
    let _ = (|| -> Result<(), Short> {
        c.i32()?; // throttle time
        if v >= 7 {
            c.i16()?; // error code
            c.i32()?; // session id
        }
        let topics = c.array_len(flex)?;
        for _ in 0..topics {
            let t = topic(c, v >= 13, flex)?;
            let parts = c.array_len(flex)?;
            for _ in 0..parts {
                let partition = c.i32()?;
                let error_code = c.i16()?;
                c.skip(8 + 8)?; // high watermark, last stable offset
                if v >= 5 {
                    c.i64()?; // log start offset
                }
                let aborted = c.len(flex)?.unwrap_or(0);
                for _ in 0..aborted {
                    c.skip(8 + 8)?;
                    c.tags(flex)?;
                }
                if v >= 11 {
                    c.i32()?; // preferred read replica
                }
                let (records, end) = records(c, flex);
                out.push(FetchResult { topic: t.clone(), partition, error_code, records });
                end?;
                c.tags(flex)?;
            }
            c.tags(flex)?;
        }
        Ok(())
    })();
    out
}

/// Decodes the topics of a Metadata response's body (version `v`, after the response header)
/// as far as they were captured: each topic's name and (v10+) id.
pub fn metadata_topics(c: &mut Cursor<'_>, v: i16) -> Vec<(String, Uuid)> {
    let flex = flexible(METADATA, v);
    let mut out = Vec::new();
    let _ = (|| -> Result<(), Short> {
        if v >= 3 {
            c.i32()?; // throttle time
        }
        let brokers = c.array_len(flex)?;
        for _ in 0..brokers {
            c.i32()?;
            c.skip_string(flex)?;
            c.i32()?;
            if v >= 1 {
                c.skip_string(flex)?; // rack
            }
            c.tags(flex)?;
        }
        if v >= 2 {
            c.skip_string(flex)?; // cluster id
        }
        if v >= 1 {
            c.i32()?; // controller id
        }
        let topics = c.array_len(flex)?;
        for _ in 0..topics {
            c.i16()?; // error code
            let name = c.string(flex)?.map(|n| String::from_utf8_lossy(n).into_owned());
            let id = if v >= 10 { c.uuid()? } else { [0; 16] };
            if v >= 1 {
                c.i8()?; // is internal
            }
            if let Some(name) = name
                && id != [0; 16]
            {
                out.push((name, id));
            }
            let parts = c.array_len(flex)?;
            for _ in 0..parts {
                c.skip(2 + 4 + 4)?; // error code, index, leader
                if v >= 7 {
                    c.i32()?; // leader epoch
                }
                c.skip_i32s(flex)?; // replicas
                c.skip_i32s(flex)?; // in-sync replicas
                if v >= 5 {
                    c.skip_i32s(flex)?; // offline replicas
                }
                c.tags(flex)?;
            }
            if v >= 8 {
                c.i32()?; // authorized operations
            }
            c.tags(flex)?;
        }
        Ok(())
    })();
    out
}

/// The name of a Kafka error code (the protocol's error names, lower case as the clients
/// print them), or the code itself.
pub fn error_name(code: i16) -> String {
    let name = match code {
        -1 => "unknown_server_error",
        1 => "offset_out_of_range",
        2 => "corrupt_message",
        3 => "unknown_topic_or_partition",
        4 => "invalid_fetch_size",
        5 => "leader_not_available",
        6 => "not_leader_or_follower",
        7 => "request_timed_out",
        8 => "broker_not_available",
        9 => "replica_not_available",
        10 => "message_too_large",
        13 => "network_exception",
        14 => "coordinator_load_in_progress",
        15 => "coordinator_not_available",
        16 => "not_coordinator",
        17 => "invalid_topic_exception",
        18 => "record_list_too_large",
        19 => "not_enough_replicas",
        20 => "not_enough_replicas_after_append",
        21 => "invalid_required_acks",
        22 => "illegal_generation",
        29 => "topic_authorization_failed",
        31 => "cluster_authorization_failed",
        32 => "invalid_timestamp",
        34 => "illegal_sasl_state",
        35 => "unsupported_version",
        36 => "topic_already_exists",
        42 => "invalid_request",
        43 => "unsupported_for_message_format",
        44 => "policy_violation",
        45 => "out_of_order_sequence_number",
        46 => "duplicate_sequence_number",
        47 => "invalid_producer_epoch",
        48 => "invalid_txn_state",
        49 => "invalid_producer_id_mapping",
        53 => "transactional_id_authorization_failed",
        56 => "kafka_storage_error",
        59 => "unknown_producer_id",
        74 => "fenced_leader_epoch",
        75 => "unknown_leader_epoch",
        76 => "unsupported_compression_type",
        78 => "offset_not_available",
        87 => "invalid_record",
        100 => "unknown_topic_id",
        _ => return code.to_string(),
    };
    name.to_owned()
}

/// A message: its true size (after the size field), and its first bytes as far as they were
/// kept and captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<M> {
    pub len: u64,
    pub body: Vec<u8>,
    /// `body` is not the whole message (a gap, or the cap).
    pub cut: bool,
    /// The transfers that carried the size field's first byte and the message's last byte.
    pub first: M,
    pub last: M,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireEvent<M> {
    Frame(Frame<M>),
    /// A gap swallowed a size field (or a size was impossible): the framing is lost until
    /// [`Reader::restart`].
    Lost,
}

#[derive(Clone, Debug)]
enum State<M> {
    Size { buf: [u8; 4], have: usize, first: Option<M> },
    Body { frame: Frame<M>, remaining: u64 },
    Lost,
}

/// A streaming reader of size-prefixed messages; keeps at most `keep` bytes of each.
pub struct Reader<M> {
    state: State<M>,
    keep: usize,
}

impl<M: Copy> Reader<M> {
    pub fn new(keep: usize) -> Self {
        Self { state: State::Size { buf: [0; 4], have: 0, first: None }, keep }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// Whether the reader is between messages.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Size { have: 0, .. })
    }

    /// The next bytes fed start a message.
    pub fn restart(&mut self) {
        self.state = State::Size { buf: [0; 4], have: 0, first: None };
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
            State::Body { remaining, frame } if n <= *remaining => {
                *remaining -= n;
                frame.cut = true;
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
        let state = std::mem::replace(&mut self.state, State::Size { buf: [0; 4], have: 0, first: None });
        if let State::Body { frame, .. } = state {
            out.push(WireEvent::Frame(frame));
        }
    }

    fn bytes(&mut self, mut b: &[u8], meta: M, out: &mut Vec<WireEvent<M>>) {
        while !b.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Size { buf, have, first } => {
                    first.get_or_insert(meta);
                    let take = (4 - *have).min(b.len());
                    buf[*have..*have + take].copy_from_slice(&b[..take]);
                    *have += take;
                    b = &b[take..];
                    if *have < 4 {
                        return;
                    }
                    let size = i32::from_be_bytes(*buf);
                    let first = first.unwrap_or(meta);
                    let Some(len) = u64::try_from(size).ok().filter(|n| (8..=MAX_MESSAGE).contains(n)) else {
                        self.lose(out);
                        return;
                    };
                    let frame = Frame { len, body: Vec::new(), cut: false, first, last: meta };
                    self.state = State::Body { frame, remaining: len };
                }
                State::Body { frame, remaining } => {
                    let take = (*remaining).min(b.len() as u64) as usize;
                    let room = self.keep.saturating_sub(frame.body.len()).min(take);
                    if frame.cut {
                        // Bytes after a gap are not contiguous with the kept ones.
                    } else {
                        frame.body.extend_from_slice(&b[..room]);
                        if room < take {
                            frame.cut = true;
                        }
                    }
                    frame.last = meta;
                    *remaining -= take as u64;
                    b = &b[take..];
                    if *remaining == 0 {
                        self.finish(out);
                    }
                }
            }
        }
    }
}
