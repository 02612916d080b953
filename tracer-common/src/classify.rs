//! Protocol classification: which protocol a connection carries, decided from its first bytes.
//! One function serves the kernel (which forwards only classified connections) and userspace
//! (which picks the parser), so the two can never disagree.

use crate::socket::ConnState;

/// Protocols the kernel tells apart. Ids are never reused.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Proto {
    /// Fewer than four bytes seen so far.
    #[default]
    Unknown = 0,
    /// HTTP/1.x.
    Http1 = 1,
    /// Anything else: the connection is not traced.
    Other = 2,
    /// HTTP/2 (h2c with prior knowledge): the connection preface was the first thing seen on
    /// the connection, written by the traced client or read by the traced server.
    Http2 = 3,
    /// PostgreSQL's frontend/backend protocol (version 3), seen from the client.
    Postgres = 4,
    /// Redis's RESP (2 or 3), seen from the client.
    Redis = 5,
    /// MySQL's and MariaDB's client/server protocol (4.1 and later), seen from the client.
    Mysql = 6,
    /// Memcached's text protocol, seen from the client.
    Memcached = 7,
    /// NATS's client protocol, seen from the client.
    Nats = 8,
    /// AMQP 0-9-1 (RabbitMQ), seen from the client.
    Amqp = 9,
    /// Kafka's protocol, seen from the client: only on a connection the traced process
    /// connected (see [`Proto::needs_client_role`]).
    Kafka = 10,
    /// A DNS answer a traced process read on a UDP socket it connected to port 53 (the
    /// socket says so, never its bytes): a lookup, attached to the connect it preceded.
    Dns = 11,
}

impl Proto {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Unknown),
            1 => Some(Self::Http1),
            2 => Some(Self::Other),
            3 => Some(Self::Http2),
            4 => Some(Self::Postgres),
            5 => Some(Self::Redis),
            6 => Some(Self::Mysql),
            7 => Some(Self::Memcached),
            8 => Some(Self::Nats),
            9 => Some(Self::Amqp),
            10 => Some(Self::Kafka),
            11 => Some(Self::Dns),
            _ => None,
        }
    }
}

/// What a transfer's first bytes are, in the protocol they belong to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Not the start of a message (or not known to be one).
    None = 0,
    /// The start of a request.
    Request = 1,
    /// The start of a response.
    Response = 2,
}

/// A classification: the protocol and whether the bytes start a request or a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub proto: Proto,
    pub kind: MessageKind,
}

/// HTTP/1 request methods the kernel recognises at the start of a connection or transfer: the
/// methods of RFC 9110, PATCH (RFC 5789) and QUERY. Only their first four bytes (with the space
/// that follows a shorter name) are compared.
pub const HTTP_METHODS: [&str; 10] =
    ["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "QUERY"];

/// The first four bytes of a request with each method of [`HTTP_METHODS`].
pub const HTTP_PREFIXES: [[u8; 4]; 10] = {
    let mut out = [[0u8; 4]; 10];
    let mut i = 0;
    while i < HTTP_METHODS.len() {
        let m = HTTP_METHODS[i].as_bytes();
        let mut j = 0;
        while j < 4 {
            out[i][j] = if j < m.len() { m[j] } else { b' ' };
            j += 1;
        }
        i += 1;
    }
    out
};

/// Classifies the first four bytes of a transfer.
#[inline(always)]
pub fn classify(p: &[u8; 4]) -> Verdict {
    if p == b"HTTP" {
        return Verdict { proto: Proto::Http1, kind: MessageKind::Response };
    }
    let mut i = 0;
    while i < HTTP_PREFIXES.len() {
        if *p == HTTP_PREFIXES[i] {
            return Verdict { proto: Proto::Http1, kind: MessageKind::Request };
        }
        i += 1;
    }
    Verdict { proto: Proto::Other, kind: MessageKind::None }
}

/// PostgreSQL's protocol version 3.0 in a StartupMessage.
pub const PG_PROTOCOL_3: u32 = 0x0003_0000;
/// The request codes PostgreSQL sends in place of a protocol version: SSLRequest and
/// GSSENCRequest (the server answers each with one byte; `N` means "go on in plain text").
pub const PG_SSL_REQUEST: u32 = 80_877_103;
pub const PG_GSSENC_REQUEST: u32 = 80_877_104;
/// Largest StartupMessage accepted by the classifier (PostgreSQL itself caps it at 10,000).
const PG_MAX_STARTUP: u32 = 10_000;

#[inline(always)]
fn be32(a: u8, b: u8, c: u8, d: u8) -> u32 {
    (a as u32) << 24 | (b as u32) << 16 | (c as u32) << 8 | d as u32
}

#[inline(always)]
fn text_or_nul(c: u8) -> bool {
    c == 0 || c == b'\t' || c == b'\n' || c == b'\r' || (0x20..0x7f).contains(&c)
}

/// Classifies the first eight bytes of a connection's first transfer as a database client's,
/// or `Other`. `writes`: the traced process wrote the transfer (else it read it); `len`: the
/// transfer's length. Prefix checks only (the kernel runs this while a connection's protocol
/// is unknown):
///
/// * PostgreSQL (written): a StartupMessage (length, then protocol 3.0), an SSLRequest or
///   GSSENCRequest (length 8, then the request code), or, on a connection older than the agent,
///   a simple query (`Q`) or a Parse (`P`) with a length below 16 MiB followed by text;
/// * Redis (written): a RESP array of bulk strings, `*<1 to 3 digits>\r\n$`;
/// * Memcached (written): a text-protocol command (`get `, `set `, `mg `…; see
///   [`memcached_command`]);
/// * MySQL / MariaDB: the server's greeting read by the client (protocol 10 and a version that
///   starts with a digit), or, on a connection older than the agent, a COM_QUERY written by it
///   (sequence 0, command 3, text, a length that fits the transfer);
/// * NATS: the server's `INFO {` read by the client (a NATS server greets every connection
///   with it), or, on a connection older than the agent, a `PUB `, `HPUB ` or `SUB ` written
///   by it (see [`nats_command`]);
/// * AMQP 0-9-1: the protocol header `AMQP 0 0 9 1` written by the client, or, on a connection
///   older than the agent, a whole method or heartbeat frame in either direction (see
///   [`amqp_frame`]; a broker's sockets look the same, so the kernel never classifies a socket
///   the process accepted this way);
/// * Kafka (written): a request's size and header (see [`kafka_request`]); only where the
///   traced process connected, which the caller checks ([`Proto::needs_client_role`]).
#[inline(always)]
pub fn classify_db(p: &[u8; 8], writes: bool, len: u64) -> Proto {
    let mlen = p[0] as u64 | (p[1] as u64) << 8 | (p[2] as u64) << 16;
    if !writes {
        // HandshakeV10: length (< 64 KiB), sequence 0, protocol 10, "8.0.36" / "5.5.5-10.11…".
        let dot_or_digit = |c: u8| c == b'.' || c.is_ascii_digit();
        if p[2] == 0
            && p[3] == 0
            && p[4] == 10
            && mlen >= 16
            && p[5].is_ascii_digit()
            && dot_or_digit(p[6])
            && dot_or_digit(p[7])
        {
            return Proto::Mysql;
        }
        if p[..6] == *b"INFO {" {
            return Proto::Nats;
        }
        if amqp_frame(p, len) {
            return Proto::Amqp;
        }
        return Proto::Other;
    }
    if nats_command(p) {
        return Proto::Nats;
    }
    if *p == AMQP_HEADER || amqp_frame(p, len) {
        return Proto::Amqp;
    }
    let pg = classify_client(p);
    if !matches!(pg, Proto::Other) {
        return pg;
    }
    if memcached_command(p) {
        return Proto::Memcached;
    }
    if kafka_request(p) {
        return Proto::Kafka;
    }
    if p[3] == 0 && p[4] == 3 && mlen >= 4 && mlen + 4 <= len && text_or_nul(p[5]) && text_or_nul(p[6]) && p[5] != 0 {
        return Proto::Mysql;
    }
    Proto::Other
}

#[inline(always)]
const fn word(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// Whether eight bytes start a Memcached text-protocol command: a storage, retrieval, delete,
/// arithmetic, touch or meta command followed by a space, or `version`, `stats`, `flush_al`
/// (`flush_all`) and `verbosit` (`verbosity`).
#[inline(always)]
pub fn memcached_command(p: &[u8; 8]) -> bool {
    let w = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let sp = |c: u8| c == b' ';
    let end = |c: u8| c == b' ' || c == b'\r';
    const GET: u32 = word(b"get ");
    const SET: u32 = word(b"set ");
    const ADD: u32 = word(b"add ");
    const CAS: u32 = word(b"cas ");
    const GAT: u32 = word(b"gat ");
    const GETS: u32 = word(b"gets");
    const GATS: u32 = word(b"gats");
    const INCR: u32 = word(b"incr");
    const DECR: u32 = word(b"decr");
    const TOUC: u32 = word(b"touc");
    const DELE: u32 = word(b"dele");
    const APPE: u32 = word(b"appe");
    const PREP: u32 = word(b"prep");
    const REPL: u32 = word(b"repl");
    const STAT: u32 = word(b"stat");
    const VERS: u32 = word(b"vers");
    const FLUS: u32 = word(b"flus");
    const VERB: u32 = word(b"verb");
    match w {
        GET | SET | ADD | CAS | GAT => true,
        GETS | GATS | INCR | DECR => sp(p[4]),
        TOUC => p[4] == b'h' && sp(p[5]),
        DELE => p[4] == b't' && p[5] == b'e' && sp(p[6]),
        APPE => p[4] == b'n' && p[5] == b'd' && sp(p[6]),
        PREP => p[4] == b'e' && p[5] == b'n' && p[6] == b'd' && sp(p[7]),
        REPL => p[4] == b'a' && p[5] == b'c' && p[6] == b'e' && sp(p[7]),
        STAT => p[4] == b's' && end(p[5]),
        VERS => p[4] == b'i' && p[5] == b'o' && p[6] == b'n' && end(p[7]),
        FLUS => p[4] == b'h' && p[5] == b'_' && p[6] == b'a' && p[7] == b'l',
        VERB => p[4] == b'o' && p[5] == b's' && p[6] == b'i' && p[7] == b't',
        // Meta commands: `mg `, `ms `, `md `, `ma `, `me ` and a key.
        _ => p[0] == b'm' && matches!(p[1], b'g' | b's' | b'd' | b'a' | b'e') && sp(p[2]) && p[3] > b' ',
    }
}

/// Whether eight bytes start a NATS client's message on a connection older than the agent: a
/// `PUB `, `HPUB ` or `SUB ` followed by a subject's first character. A client's `CONNECT`
/// is not one of them: it only ever follows the server's `INFO` (which classifies the
/// connection), and its first four bytes are HTTP/1's CONNECT method, which [`classify`]
/// claims first.
#[inline(always)]
pub fn nats_command(p: &[u8; 8]) -> bool {
    let subject = |c: u8| c > b' ' && c < 0x7f;
    (p[..4] == *b"PUB " && subject(p[4]))
        || (p[..5] == *b"HPUB " && subject(p[5]))
        || (p[..4] == *b"SUB " && subject(p[4]))
}

/// The protocol header an AMQP 0-9-1 client writes first.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Largest AMQP frame taken as real by the classifier (RabbitMQ's default `frame_max`).
pub const AMQP_FRAME_MAX: u32 = 128 << 10;
/// The octet that ends every AMQP frame.
pub const AMQP_FRAME_END: u8 = 0xce;

/// Whether the first eight bytes of a transfer of `len` bytes start a whole AMQP 0-9-1 frame:
/// a method frame (type 1, a size of at least the class and method ids that the transfer
/// holds, up to [`AMQP_FRAME_MAX`], and a class id below 256, as every class of the protocol
/// has) or a heartbeat frame (type 8 on channel 0, size 0, then the frame end).
#[inline(always)]
pub fn amqp_frame(p: &[u8; 8], len: u64) -> bool {
    let size = be32(p[3], p[4], p[5], p[6]);
    if p[0] == 8 {
        return p[1] == 0 && p[2] == 0 && size == 0 && p[7] == AMQP_FRAME_END;
    }
    p[0] == 1 && (4..=AMQP_FRAME_MAX).contains(&size) && size as u64 + 8 <= len && p[7] == 0
}

/// Largest Kafka API key the classifier accepts (the protocol's keys run to about 70).
pub const KAFKA_MAX_API_KEY: u8 = 74;
/// Largest Kafka API version the classifier accepts (the protocol's largest is below 20).
pub const KAFKA_MAX_API_VERSION: u8 = 20;
/// Smallest Kafka request: API key, API version, correlation id and an empty client id.
const KAFKA_MIN_REQUEST: u32 = 10;

/// Whether eight bytes start a Kafka request (header v1 or v2): a big-endian size from
/// [`KAFKA_MIN_REQUEST`] to 16 MiB, an API key up to [`KAFKA_MAX_API_KEY`] and an API version
/// up to [`KAFKA_MAX_API_VERSION`]. Produce (key 0) before version 3 and Fetch (key 1) before
/// version 4 are refused (brokers since Kafka 4.0 refuse them too): eight bytes that start
/// `00 00 LL xx 00 00 00 0v` — an HTTP/2 frame header of type 4 or 8 on stream 0, a response
/// header with a small correlation id — are never taken for Produce v0. PostgreSQL's
/// StartupMessage (`… 00 03 00 00`, Metadata v0 to this test) is claimed first.
#[inline(always)]
pub fn kafka_request(p: &[u8; 8]) -> bool {
    let size = be32(p[0], p[1], p[2], p[3]);
    let (key, version) = (p[5], p[7]);
    p[0] == 0
        && size >= KAFKA_MIN_REQUEST
        && p[4] == 0
        && key <= KAFKA_MAX_API_KEY
        && p[6] == 0
        && version <= KAFKA_MAX_API_VERSION
        && !(key == 0 && version < 3)
        && !(key == 1 && version < 4)
}

/// The PostgreSQL and Redis part of [`classify_db`] (a transfer the traced process wrote).
#[inline(always)]
pub fn classify_client(p: &[u8; 8]) -> Proto {
    let len = be32(p[0], p[1], p[2], p[3]);
    let code = be32(p[4], p[5], p[6], p[7]);
    if (code == PG_PROTOCOL_3 && (8..=PG_MAX_STARTUP).contains(&len))
        || (len == 8 && (code == PG_SSL_REQUEST || code == PG_GSSENC_REQUEST))
    {
        return Proto::Postgres;
    }
    if (p[0] == b'Q' || p[0] == b'P') && p[1] == 0 {
        let mlen = be32(p[1], p[2], p[3], p[4]);
        if mlen >= 7 && text_or_nul(p[5]) && text_or_nul(p[6]) && text_or_nul(p[7]) {
            return Proto::Postgres;
        }
    }
    if p[0] == b'*' && p[1].is_ascii_digit() {
        // `*N\r\n$`, `*NN\r\n$` or `*NNN\r\n$`.
        if (p[2] == b'\r' && p[3] == b'\n' && p[4] == b'$')
            || (p[2].is_ascii_digit() && p[3] == b'\r' && p[4] == b'\n' && p[5] == b'$')
            || (p[2].is_ascii_digit() && p[3].is_ascii_digit() && p[4] == b'\r' && p[5] == b'\n' && p[6] == b'$')
        {
            return Proto::Redis;
        }
    }
    Proto::Other
}

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies the first eight bytes of the first transfer of at least eight bytes seen on a
/// connection whose protocol is unknown (`writes`: the traced process wrote them):
///
/// * HTTP/2 when they start the connection preface, in either direction (the client writes
///   it, the server reads it);
/// * `Unknown` for an HTTP/2 SETTINGS frame header (`00 00 LL 04 00 00 00 00`, no flags,
///   stream 0), written or read: an HTTP/2 server may send its SETTINGS before it reads the
///   client's preface, so the server may write them, and the client read them, before the
///   preface has moved (grpc-go's client starts its reader before it writes the preface). The
///   connection stays undecided until the preface (the kernel forwards nothing of this
///   transfer);
/// * a database connection ([`classify_db`]) otherwise: a client's request written, or a
///   MySQL server's greeting read;
/// * `Other` otherwise.
///
/// An HTTP/2 connection opened before the agent started shows no preface: it is classified
/// `Other` and not traced. (Recognising it from a frame header mid-stream would also mean
/// decoding header blocks against an HPACK dynamic table that was filled before the agent
/// saw the connection; the agent does not guess.)
#[inline(always)]
pub fn classify_first8(p: &[u8; 8], writes: bool, len: u64) -> Proto {
    if p[0] == b'P'
        && p[1] == b'R'
        && p[2] == b'I'
        && p[3] == b' '
        && p[4] == b'*'
        && p[5] == b' '
        && p[6] == b'H'
        && p[7] == b'T'
    {
        return Proto::Http2;
    }
    if p[0] == 0 && p[3] == 4 && p[4] == 0 && p[5] == 0 && p[6] == 0 && p[7] == 0 && p[2].is_multiple_of(6) && p[1] == 0
    {
        return Proto::Unknown;
    }
    classify_db(p, writes, len)
}

impl Proto {
    /// The protocol's bit in a set of protocols (a `u32`: ids stay below 32).
    #[inline(always)]
    pub const fn bit(self) -> u32 {
        1 << self as u8
    }

    /// Protocols traced from the client side only, every write of the client starting (or
    /// continuing) requests: the databases and the message brokers.
    pub const CLIENT_SIDE: u32 = Self::Postgres.bit()
        | Self::Redis.bit()
        | Self::Mysql.bit()
        | Self::Memcached.bit()
        | Self::Nats.bit()
        | Self::Amqp.bit()
        | Self::Kafka.bit();

    /// Protocols [`classify_first8`] decides a connection for.
    pub const DECIDED_BY_FIRST8: u32 = Self::Http2.bit() | Self::CLIENT_SIDE;

    /// Whether the protocol id `v` (a `Proto` as a number) is in the set `set`.
    #[inline(always)]
    pub const fn in_set(set: u32, v: u32) -> bool {
        v < 32 && (set >> v) & 1 != 0
    }

    /// A database or message-broker protocol: traced from the client side only, every write
    /// of the client starting (or continuing) requests ([`Self::CLIENT_SIDE`]).
    #[inline(always)]
    pub const fn is_db(self) -> bool {
        Self::in_set(Self::CLIENT_SIDE, self as u32)
    }

    /// A protocol recognised from a write only where the traced process connected (its
    /// requests look like nothing a server writes only as long as servers are left out):
    /// Kafka, whose response header (size, correlation id) passes for a request's.
    #[inline(always)]
    pub const fn needs_client_role(self) -> bool {
        matches!(self, Self::Kafka)
    }
}

impl ConnState {
    /// Adds the first bytes of a transfer of `len` bytes (`first`, of which `min(len, 4)` are
    /// valid) to the bytes kept while fewer than four were seen, and classifies them once four
    /// are known. Returns `Proto::Unknown` while fewer than four bytes were seen in all.
    #[inline(always)]
    pub fn join(&mut self, first: &[u8; 4], len: u64) -> Verdict {
        let have = self.plen as u64;
        if have >= 4 {
            return classify(&self.prefix);
        }
        let mut p = self.prefix;
        let mut n = have;
        let mut i = 0u64;
        while i < 4 {
            if i < len && n < 4 {
                // Constant indices only: the verifier sees every access in bounds.
                match n {
                    0 => p[0] = first[i as usize & 3],
                    1 => p[1] = first[i as usize & 3],
                    2 => p[2] = first[i as usize & 3],
                    _ => p[3] = first[i as usize & 3],
                }
                n += 1;
            }
            i += 1;
        }
        self.prefix = p;
        self.plen = n as u8;
        if n < 4 {
            return Verdict { proto: Proto::Unknown, kind: MessageKind::None };
        }
        classify(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_and_the_status_line() {
        for m in HTTP_METHODS {
            let line = [m.as_bytes(), b" / HTTP/1.1\r\n"].concat();
            let p: [u8; 4] = line[..4].try_into().unwrap();
            assert_eq!(classify(&p), Verdict { proto: Proto::Http1, kind: MessageKind::Request }, "{m}");
        }
        assert_eq!(classify(b"HTTP"), Verdict { proto: Proto::Http1, kind: MessageKind::Response });
    }

    #[test]
    fn other_protocols_are_not_http1() {
        for p in [b"PRI ", b"\x16\x03\x01\x02", b"*1\r\n", b"get ", b"GETX", b"\0\0\0\x08", b"SSH-"] {
            assert_eq!(classify(p).proto, Proto::Other, "{p:?}");
        }
    }

    #[test]
    fn database_clients() {
        let startup = [&[0, 0, 0, 41][..], &[0, 3, 0, 0], b"user\0app\0database\0shop\0\0"].concat();
        let p = |b: &[u8]| -> [u8; 8] { b[..8].try_into().unwrap() };
        assert_eq!(classify_client(&p(&startup)), Proto::Postgres);
        assert_eq!(classify_client(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]), Proto::Postgres, "SSLRequest");
        assert_eq!(classify_client(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]), Proto::Postgres, "GSSENCRequest");
        assert_eq!(classify_client(&p(b"Q\0\0\0\x0dSELECT 1\0")), Proto::Postgres);
        assert_eq!(classify_client(&p(b"P\0\0\0\x10\0SELECT 1\0\0\0")), Proto::Postgres);
        assert_eq!(classify_client(b"*1\r\n$4\r\n"), Proto::Redis);
        assert_eq!(classify_client(b"*12\r\n$3\r"), Proto::Redis);
        assert_eq!(classify_client(b"*123\r\n$3"), Proto::Redis);
        for other in [
            b"*1234\r\n$",
            b"*\r\n$3\r\n\0",
            b"+OK\r\n\0\0\0",
            b"\x16\x03\x01\x02\0\x01\0\0",
            &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2e],
            &[0, 0, 0x30, 0, 0, 3, 0, 0],
            b"Q\x01\0\0\x0dSEL",
            b"Q\0\0\0\x0d\x01\x02\x03",
            b"R\0\0\0\x08\0\0\0",
        ] {
            assert_eq!(classify_client(other), Proto::Other, "{other:?}");
        }
    }

    #[test]
    fn http2_preface_either_way() {
        let p: [u8; 8] = H2_PREFACE[..8].try_into().unwrap();
        assert_eq!(classify_first8(&p, true, 24), Proto::Http2, "a client writes it");
        assert_eq!(classify_first8(&p, false, 24), Proto::Http2, "a server reads it");
        assert_eq!(classify(&H2_PREFACE[..4].try_into().unwrap()).proto, Proto::Other, "not HTTP/1");
        assert_eq!(Proto::from_u8(3), Some(Proto::Http2));
        // A database request only counts when written; a frame header is never HTTP/2 here.
        assert_eq!(classify_first8(b"*1\r\n$4\r\n", true, 8), Proto::Redis);
        assert_eq!(classify_first8(b"*1\r\n$4\r\n", false, 8), Proto::Other);
        assert_eq!(classify_first8(&[0, 0, 0x12, 4, 0, 0, 0, 0], true, 18), Proto::Unknown, "a server's SETTINGS");
        assert_eq!(
            classify_first8(&[0, 0, 0x12, 4, 0, 0, 0, 0], false, 18),
            Proto::Unknown,
            "the server's SETTINGS, read by a client before it wrote its preface"
        );
        assert_eq!(classify_first8(&[0, 0, 0x12, 4, 1, 0, 0, 0], false, 9), Proto::Other, "a SETTINGS ACK read");
        assert_eq!(classify_first8(&[0, 0, 4, 8, 0, 0, 0, 0], false, 13), Proto::Other, "a WINDOW_UPDATE read");
        assert_eq!(classify_first8(&[0, 0, 0, 4, 0, 0, 0, 0], true, 18), Proto::Unknown, "empty SETTINGS");
        assert_eq!(classify_first8(&[0, 0, 0x12, 4, 1, 0, 0, 0], true, 18), Proto::Other, "an ACK is not first");
        assert_eq!(classify_first8(&[0, 0, 0x13, 4, 0, 0, 0, 0], true, 18), Proto::Other, "not 6-byte settings");
        assert_eq!(classify_first8(b"PRI * HX", true, 8), Proto::Other);
    }

    #[test]
    fn join_collects_tiny_transfers() {
        let mut s = ConnState::default();
        assert_eq!(s.join(b"G\0\0\0", 1).proto, Proto::Unknown);
        assert_eq!(s.join(b"ET\0\0", 2).proto, Proto::Unknown);
        let v = s.join(b" /a ", 4);
        assert_eq!(v, Verdict { proto: Proto::Http1, kind: MessageKind::Request });
        assert_eq!(&s.prefix, b"GET ");
        // Once four bytes are known the verdict stays.
        assert_eq!(s.join(b"xxxx", 4).proto, Proto::Http1);
    }

    #[test]
    fn join_of_a_long_transfer_classifies_at_once() {
        let mut s = ConnState::default();
        assert_eq!(s.join(b"\x16\x03\x01\x00", 300).proto, Proto::Other);
    }

    #[test]
    fn mysql_and_memcached() {
        let p = |b: &[u8]| -> [u8; 8] { b[..8].try_into().unwrap() };
        // MySQL 8 and MariaDB greetings, read by the client.
        assert_eq!(classify_db(&p(b"\x4a\x00\x00\x00\x0a8.0.36\0"), false, 78), Proto::Mysql);
        assert_eq!(classify_db(&p(b"\x5b\x00\x00\x00\x0a5.5.5-10.11"), false, 95), Proto::Mysql);
        assert_eq!(classify_db(&p(b"\x4a\x00\x00\x00\x0a8.0.36\0"), true, 78), Proto::Other, "written");
        assert_eq!(classify_db(&p(b"\x4a\x00\x00\x00\x09abcdef"), false, 78), Proto::Other, "protocol 9");
        // A COM_QUERY on a connection older than the agent: its length must fit the transfer.
        assert_eq!(classify_db(&p(b"\x09\x00\x00\x00\x03SELECT 1"), true, 13), Proto::Mysql);
        assert_eq!(classify_db(&p(b"\x09\x00\x00\x00\x03SELECT 1"), true, 12), Proto::Other);
        for cmd in [
            &b"get user:1\r\n"[..],
            b"gets a b\r\n",
            b"set k 0 0 5\r\n",
            b"delete k\r\n",
            b"incr n 1\r\n",
            b"touch k 10\r\n",
            b"append k 0 0 1\r\n",
            b"prepend k 0 0 1\r\n",
            b"replace k 0 0 1\r\n",
            b"mg key v\r\n",
            b"ms key 2\r\n",
            b"version\r\n",
            b"stats items\r\n",
            b"flush_all\r\n",
            b"verbosity 1\r\n",
        ] {
            assert_eq!(classify_db(&p(cmd), true, cmd.len() as u64), Proto::Memcached, "{cmd:?}");
        }
        for other in [&b"GET / HTTP/1.1"[..], b"getaway!", b"settings", b"mget k\r\n", b"version1", b"m  key\r\n"] {
            assert_eq!(classify_db(&p(other), true, other.len() as u64), Proto::Other, "{other:?}");
        }
        // PostgreSQL and Redis still come first.
        assert_eq!(classify_db(&p(b"*1\r\n$4\r\nPING"), true, 14), Proto::Redis);
    }

    #[test]
    fn nats() {
        let p = |b: &[u8]| -> [u8; 8] { b[..8].try_into().unwrap() };
        let info = b"INFO {\"server_id\":\"x\"}\r\n";
        assert_eq!(classify_db(&p(info), false, info.len() as u64), Proto::Nats, "INFO read");
        assert_eq!(classify_db(&p(info), true, info.len() as u64), Proto::Other, "INFO written");
        for cmd in [&b"PUB a.b 5\r\nhello\r\n"[..], b"HPUB a 12 14\r\n", b"SUB a 1\r\n"] {
            assert_eq!(classify_db(&p(cmd), true, cmd.len() as u64), Proto::Nats, "{cmd:?}");
            assert_eq!(classify_db(&p(cmd), false, cmd.len() as u64), Proto::Other, "{cmd:?} read");
        }
        for other in [&b"PUB  a 5\r\n"[..], b"PUB\ta 5\r\n", b"SUBSCRIBE x", b"INFO  {}", b"MSG a 1 5\r\n"] {
            assert_eq!(classify_db(&p(other), true, other.len() as u64), Proto::Other, "{other:?}");
            assert_eq!(classify_db(&p(other), false, other.len() as u64), Proto::Other, "{other:?}");
        }
        // A client's CONNECT is HTTP/1's method to the kernel's first look; it never comes first.
        assert_eq!(classify(b"CONN").proto, Proto::Http1);
        // A NATS subject never collides with the other clients' first bytes.
        assert_eq!(classify_first8(b"PUB a 5\r", true, 12), Proto::Nats);
        assert_eq!(classify_first8(b"INFO {\"s", false, 300), Proto::Nats);
        assert_eq!(Proto::from_u8(8), Some(Proto::Nats));
        assert!(Proto::Nats.is_db());
    }

    #[test]
    fn amqp_from_the_protocol_header_or_a_whole_frame() {
        assert_eq!(classify_first8(&AMQP_HEADER, true, 8), Proto::Amqp);
        assert_eq!(Proto::from_u8(9), Some(Proto::Amqp));
        assert!(Proto::Amqp.is_db());
        // basic.publish on channel 1 (size 20), and more frames after it in the transfer.
        let publish = [1, 0, 1, 0, 0, 0, 20, 0];
        assert_eq!(classify_first8(&publish, true, 28), Proto::Amqp);
        assert_eq!(classify_first8(&publish, true, 200), Proto::Amqp);
        // basic.deliver read by a consumer on a connection older than the agent.
        assert_eq!(classify_first8(&publish, false, 60), Proto::Amqp);
        // A heartbeat.
        assert_eq!(classify_first8(&[8, 0, 0, 0, 0, 0, 0, 0xce], true, 8), Proto::Amqp);
        // A frame the transfer does not hold, a class id past 255, an oversized frame, a
        // heartbeat on a channel: not AMQP.
        assert_eq!(classify_first8(&publish, true, 27), Proto::Other);
        assert_eq!(classify_first8(&[1, 0, 1, 0, 0, 0, 20, 1], true, 28), Proto::Other);
        assert_eq!(classify_first8(&[1, 0, 1, 0, 2, 0, 1, 0], true, 1 << 20), Proto::Other);
        assert_eq!(classify_first8(&[8, 0, 1, 0, 0, 0, 0, 0xce], true, 8), Proto::Other);
        // Other protocols' first bytes stay theirs.
        assert_eq!(classify_first8(b"PRI * HT", true, 24), Proto::Http2);
        assert_eq!(classify_first8(b"*1\r\n$4\r\n", true, 14), Proto::Redis);
    }

    /// A Kafka request's first eight bytes: size, API key, API version.
    fn kafka(size: u32, key: u16, version: u16) -> [u8; 8] {
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&size.to_be_bytes());
        p[4..6].copy_from_slice(&key.to_be_bytes());
        p[6..].copy_from_slice(&version.to_be_bytes());
        p
    }

    #[test]
    fn kafka_requests() {
        for (key, version) in [(18, 3), (18, 0), (3, 12), (0, 3), (0, 9), (0, 13), (1, 4), (1, 17), (74, 20), (10, 4)] {
            let p = kafka(120, key, version);
            assert!(kafka_request(&p), "key {key} v{version}");
            assert_eq!(classify_first8(&p, true, 124), Proto::Kafka, "key {key} v{version}");
            assert_eq!(classify_first8(&p, false, 124), Proto::Other, "key {key} v{version} read");
        }
        for (size, key, version) in [
            (120, 0, 0),
            (120, 0, 2),
            (120, 1, 0),
            (120, 1, 3),
            (120, 75, 0),
            (120, 3, 21),
            (120, 0x100, 3),
            (9, 18, 3),
            (0x0100_0000, 18, 3),
        ] {
            assert!(!kafka_request(&kafka(size, key, version)), "size {size} key {key} v{version}");
        }
        // HTTP/2 frame headers on stream 0 read as Produce v0: never Kafka.
        assert_eq!(classify_first8(&[0, 0, 0x12, 4, 0, 0, 0, 0], true, 18), Proto::Unknown, "SETTINGS");
        assert_eq!(classify_first8(&[0, 0, 0, 4, 1, 0, 0, 0], true, 9), Proto::Other, "SETTINGS ACK");
        assert_eq!(classify_first8(&[0, 0, 4, 8, 0, 0, 0, 0], true, 13), Proto::Other, "WINDOW_UPDATE");
        assert_eq!(classify_first8(&[0, 0, 8, 6, 0, 0, 0, 0], true, 17), Proto::Other, "PING");
        // PostgreSQL's StartupMessage (Metadata v0 to the Kafka test) stays PostgreSQL.
        assert_eq!(classify_first8(&[0, 0, 0, 41, 0, 3, 0, 0], true, 41), Proto::Postgres);
        assert_eq!(Proto::from_u8(10), Some(Proto::Kafka));
        assert!(Proto::Kafka.is_db() && Proto::Kafka.needs_client_role());
        assert!(!Proto::Nats.needs_client_role());
    }

    #[test]
    fn protocol_sets() {
        for p in [Proto::Postgres, Proto::Redis, Proto::Mysql, Proto::Memcached, Proto::Nats, Proto::Amqp, Proto::Kafka]
        {
            assert!(p.is_db(), "{p:?}");
            assert!(Proto::in_set(Proto::DECIDED_BY_FIRST8, p as u32), "{p:?}");
        }
        for p in [Proto::Unknown, Proto::Http1, Proto::Other, Proto::Http2] {
            assert!(!p.is_db(), "{p:?}");
        }
        assert!(Proto::in_set(Proto::DECIDED_BY_FIRST8, Proto::Http2 as u32));
        for v in [0, 1, 2, 11, 31, 32, 200, u32::MAX] {
            assert!(!Proto::in_set(Proto::DECIDED_BY_FIRST8, v), "{v}");
        }
    }
}
