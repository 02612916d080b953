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
}

impl Proto {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Unknown),
            1 => Some(Self::Http1),
            2 => Some(Self::Other),
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
}
