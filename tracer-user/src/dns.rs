//! DNS lookups of traced processes: the answers the kernel read on UDP sockets and TCP
//! connections to port 53 (`tracer-ebpf/src/socket/dns.rs`, as `Proto::Dns` data events whose start is the
//! time the query left), parsed with `simple-dns` and kept per process for a while. They serve
//! what follows them:
//!
//! * the client request whose connection was opened right after a lookup answered the
//!   connection's peer address gets that lookup as its `dns` phase (once: a connect belongs to
//!   the first request on its connection, and so does its lookup);
//! * a client span whose protocol names no server says the name its process looked up for the
//!   peer address as `server.address` (OpenTelemetry wants the name, not the address).
//!
//! The answers of one lookup (glibc and Go ask A and AAAA at once) become one lookup: from the
//! first query out to the last answer in. Only names and addresses are kept.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use simple_dns::rdata::RData;
use simple_dns::{Packet, PacketFlag, RCODE};

/// Answers to one name this close together are one lookup (A and AAAA asked at once).
const MERGE_NS: u64 = 1_000_000_000;
/// A connect at most this long after its lookup ended is the lookup's.
pub const LEAD_NS: u64 = 1_000_000_000;
/// Lookups kept per process (the newest).
const PER_PROCESS: usize = 64;
/// Processes with lookups kept; beyond, the one with the oldest lookup is forgotten.
const MAX_PROCESSES: usize = 4096;

/// A lookup: from its first query out to its last answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Addresses the answers gave (A and AAAA records).
    pub addresses: u16,
    /// The answers' response code when none gave an address and one said why (NXDOMAIN,
    /// SERVFAIL, ...); `None` otherwise.
    pub rcode: Option<u8>,
}

impl Lookup {
    /// The response code's name (`error.type`), when the lookup failed.
    pub fn error_type(&self) -> Option<&'static str> {
        self.rcode.map(rcode_name)
    }
}

/// An answer the kernel captured could not be read as one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("a DNS query, not an answer")]
    NotAnAnswer,
    #[error("a DNS answer to {0} questions (one expected)")]
    Questions(usize),
}

#[derive(Debug)]
struct Answered {
    name: Arc<str>,
    lookup: Lookup,
    addrs: Vec<IpAddr>,
    /// A connect took the lookup as its phase.
    used: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    pub answers: u64,
    /// Captured bytes that were no DNS answer (or cut short past what the kernel captured).
    pub unreadable: u64,
    /// Lookups given to a connect as its `dns` phase.
    pub phases: u64,
}

/// The recent lookups of every process. See the module docs.
#[derive(Debug, Default)]
pub struct Lookups {
    by_tgid: HashMap<u32, VecDeque<Answered>>,
    stats: LookupStats,
}

impl Lookups {
    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// Process `tgid` read the answer `bytes` of a lookup whose query left at `start_ns`, at
    /// `end_ns`.
    pub fn on_answer(&mut self, tgid: u32, start_ns: u64, end_ns: u64, bytes: &[u8]) -> Result<(), AnswerError> {
        let parsed = parse(bytes);
        let (name, addrs, rcode) = match parsed {
            Ok(a) => a,
            Err(e) => {
                self.stats.unreadable += 1;
                return Err(e);
            }
        };
        self.stats.answers += 1;
        let failed = (addrs.is_empty() && rcode != RCODE::NoError as u8).then_some(rcode);
        if !self.by_tgid.contains_key(&tgid) && self.by_tgid.len() >= MAX_PROCESSES {
            let oldest =
                self.by_tgid.iter().map(|(t, q)| (q.back().map_or(0, |a| a.lookup.end_ns), *t)).min().map(|(_, t)| t);
            if let Some(t) = oldest {
                self.by_tgid.remove(&t);
            }
        }
        let list = self.by_tgid.entry(tgid).or_default();
        let start_ns = start_ns.min(end_ns);
        if let Some(last) =
            list.iter_mut().rev().find(|a| *a.name == *name && a.lookup.end_ns.saturating_add(MERGE_NS) >= start_ns)
        {
            let l = &mut last.lookup;
            l.start_ns = l.start_ns.min(start_ns);
            l.end_ns = l.end_ns.max(end_ns);
            for a in addrs {
                if !last.addrs.contains(&a) {
                    last.addrs.push(a);
                }
            }
            l.addresses = u16::try_from(last.addrs.len()).unwrap_or(u16::MAX);
            l.rcode = if last.addrs.is_empty() { l.rcode.or(failed) } else { None };
            return Ok(());
        }
        if list.len() >= PER_PROCESS {
            list.pop_front();
        }
        let addresses = u16::try_from(addrs.len()).unwrap_or(u16::MAX);
        list.push_back(Answered {
            name: name.into(),
            lookup: Lookup { start_ns, end_ns, addresses, rcode: failed },
            addrs,
            used: false,
        });
        Ok(())
    }

    /// The lookup of process `tgid` that the connect to `peer` entered at `connect_ns` followed:
    /// the newest one not given to a connect yet that answered `peer` and ended at most
    /// [`LEAD_NS`] before. It is given to this connect only.
    pub fn for_connect(&mut self, tgid: u32, peer: IpAddr, connect_ns: u64) -> Option<(Lookup, Arc<str>)> {
        let peer = peer.to_canonical();
        let a = self.by_tgid.get_mut(&tgid)?.iter_mut().rev().find(|a| {
            !a.used
                && a.lookup.end_ns <= connect_ns
                && connect_ns - a.lookup.end_ns <= LEAD_NS
                && a.addrs.contains(&peer)
        })?;
        a.used = true;
        self.stats.phases += 1;
        Some((a.lookup, a.name.clone()))
    }

    /// The name process `tgid` last looked up that answered `peer`.
    pub fn name_of(&self, tgid: u32, peer: IpAddr) -> Option<Arc<str>> {
        let peer = peer.to_canonical();
        self.by_tgid.get(&tgid)?.iter().rev().find(|a| a.addrs.contains(&peer)).map(|a| a.name.clone())
    }

    /// Process `tgid` exited.
    pub fn forget(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }
}

/// The question's name, the answer's addresses and its response code, from a message read
/// alone or, over TCP, read with its 2-byte length in front.
fn parse(bytes: &[u8]) -> Result<(String, Vec<IpAddr>, u8), AnswerError> {
    match parse_message(bytes) {
        Err(e) if length_prefixed(bytes) => parse_message(&bytes[2..]).map_err(|_| e),
        r => r,
    }
}

/// Whether `b` starts with the big-endian length of the rest (DNS over TCP).
fn length_prefixed(b: &[u8]) -> bool {
    b.len() > 2 && usize::from(u16::from_be_bytes([b[0], b[1]])) == b.len() - 2
}

fn parse_message(bytes: &[u8]) -> Result<(String, Vec<IpAddr>, u8), AnswerError> {
    let p = Packet::parse(bytes).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    if !p.has_flags(PacketFlag::RESPONSE) {
        return Err(AnswerError::NotAnAnswer);
    }
    if p.questions.len() != 1 {
        return Err(AnswerError::Questions(p.questions.len()));
    }
    let name = p.questions[0].qname.to_string().to_ascii_lowercase();
    let addrs = p
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
            RData::AAAA(a) => Some(IpAddr::V6(Ipv6Addr::from(a.address)).to_canonical()),
            _ => None,
        })
        .collect();
    Ok((name, addrs, p.rcode() as u8))
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "DNS_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use simple_dns::rdata::{A, AAAA};
    use simple_dns::{CLASS, Name, QCLASS, QTYPE, Question, ResourceRecord, TYPE};

    use super::*;

    const MS: u64 = 1_000_000;

    fn answer(name: &str, v4: &[[u8; 4]], v6: &[Ipv6Addr], rcode: RCODE) -> Vec<u8> {
        let mut p = Packet::new_reply(7);
        *p.rcode_mut() = rcode;
        let qtype = if v6.is_empty() { TYPE::A } else { TYPE::AAAA };
        p.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(qtype), QCLASS::CLASS(CLASS::IN), false));
        for a in v4 {
            let rdata = RData::A(A { address: u32::from_be_bytes(*a) });
            p.answers.push(ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, 30, rdata));
        }
        for a in v6 {
            let rdata = RData::AAAA(AAAA { address: u128::from(*a) });
            p.answers.push(ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, 30, rdata));
        }
        p.build_bytes_vec().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_and_aaaa_answers_are_one_lookup_given_to_the_next_connect_once() {
        let mut l = Lookups::default();
        let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
        l.on_answer(10, 100 * MS, 103 * MS, &answer("API.example.com", &[[10, 0, 0, 5]], &[], RCODE::NoError)).unwrap();
        l.on_answer(10, 101 * MS, 104 * MS, &answer("api.example.com", &[], &[v6], RCODE::NoError)).unwrap();
        let (lookup, name) = l.for_connect(10, ip("::ffff:10.0.0.5"), 105 * MS).expect("the lookup");
        assert_eq!(&*name, "api.example.com");
        assert_eq!(lookup, Lookup { start_ns: 100 * MS, end_ns: 104 * MS, addresses: 2, rcode: None });
        assert_eq!(l.for_connect(10, ip("10.0.0.5"), 106 * MS), None, "a second connect gets no lookup");
        assert_eq!(l.name_of(10, ip("2001:db8::5")).as_deref(), Some("api.example.com"));
        assert_eq!(l.name_of(11, ip("10.0.0.5")), None, "another process");
        assert_eq!(l.stats().phases, 1);
    }

    #[test]
    fn a_connect_long_after_or_before_the_lookup_is_not_its() {
        let mut l = Lookups::default();
        l.on_answer(10, 100 * MS, 103 * MS, &answer("db.internal", &[[10, 0, 0, 9]], &[], RCODE::NoError)).unwrap();
        assert_eq!(l.for_connect(10, ip("10.0.0.9"), 102 * MS), None, "the connect began before the answer");
        assert_eq!(l.for_connect(10, ip("10.0.0.9"), 103 * MS + LEAD_NS + 1), None, "too late");
        assert_eq!(l.for_connect(10, ip("10.0.0.8"), 104 * MS), None, "another address");
        assert!(l.for_connect(10, ip("10.0.0.9"), 104 * MS).is_some());
    }

    #[test]
    fn a_failed_lookup_says_why_and_names_nothing() {
        let mut l = Lookups::default();
        l.on_answer(3, 0, 5 * MS, &answer("nope.example", &[], &[], RCODE::NameError)).unwrap();
        let a = &l.by_tgid[&3][0];
        assert_eq!(a.lookup.error_type(), Some("NXDOMAIN"));
        assert_eq!(a.lookup.addresses, 0);
        // An AAAA that failed beside an A that answered is no failure.
        l.on_answer(3, 10 * MS, 12 * MS, &answer("x.example", &[], &[], RCODE::ServerFailure)).unwrap();
        l.on_answer(3, 10 * MS, 13 * MS, &answer("x.example", &[[10, 1, 1, 1]], &[], RCODE::NoError)).unwrap();
        let (lookup, _) = l.for_connect(3, ip("10.1.1.1"), 14 * MS).unwrap();
        assert_eq!(lookup.error_type(), None);
    }

    /// Over TCP an answer read with its 2-byte length in front is read past it; a message that
    /// merely starts with bytes that look like a length is still itself.
    #[test]
    fn an_answer_read_with_its_tcp_length_is_read_past_it() {
        let mut l = Lookups::default();
        let msg = answer("tcp.example", &[[10, 2, 2, 2]], &[], RCODE::NoError);
        let mut framed = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&msg);
        l.on_answer(4, 0, 2 * MS, &framed).unwrap();
        assert_eq!(l.name_of(4, ip("10.2.2.2")).as_deref(), Some("tcp.example"));
        assert!(length_prefixed(&framed) && !length_prefixed(&msg));
        // The message alone (the length read apart, as glibc and Go do) parses as it is.
        l.on_answer(5, 0, 2 * MS, &msg).unwrap();
        assert_eq!(l.stats(), LookupStats { answers: 2, unreadable: 0, phases: 0 });
        // A length that is not the rest's is no framing: the bytes stay unreadable.
        framed[1] ^= 1;
        assert!(l.on_answer(6, 0, 1, &framed).is_err());
    }

    #[test]
    fn bad_bytes_are_counted_and_said() {
        let mut l = Lookups::default();
        assert!(matches!(l.on_answer(1, 0, 1, b"\x00\x01garbage"), Err(AnswerError::Malformed(_))));
        let mut q = Packet::new_query(1);
        q.questions.push(Question::new(
            Name::new_unchecked("a.b"),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        assert_eq!(l.on_answer(1, 0, 1, &q.build_bytes_vec().unwrap()), Err(AnswerError::NotAnAnswer));
        assert_eq!(l.stats(), LookupStats { answers: 0, unreadable: 2, phases: 0 });
    }

    #[test]
    fn bounded_per_process_and_forgotten_at_exit() {
        let mut l = Lookups::default();
        for i in 0..(PER_PROCESS as u64 + 10) {
            let name = format!("h{i}.example");
            let t = i * 10 * MERGE_NS;
            l.on_answer(5, t, t + MS, &answer(&name, &[[10, 0, (i >> 8) as u8, i as u8]], &[], RCODE::NoError))
                .unwrap();
        }
        assert_eq!(l.by_tgid[&5].len(), PER_PROCESS);
        assert_eq!(l.name_of(5, ip("10.0.0.0")), None, "the oldest went");
        l.forget(5);
        assert!(l.by_tgid.is_empty());
    }
}
