//! Pure DNS wire handling of the serving path: no I/O, no clock.
//!
//! The fast path answers the bulk of rack traffic (A and PTR of existing hosts, NXDOMAIN under our
//! zones) straight from a precomputed [`FastMap`], copying the question and appending prebuilt
//! answer bytes. Everything it does not fully understand is left to the slow path (hickory's
//! `Catalog`), so the fast path only has to be right for the cases it accepts.

use std::collections::HashMap;

use hickory_proto::rr::Name;

/// DNS header length.
pub(crate) const HEADER_LEN: usize = 12;
/// RR type A.
pub(crate) const TYPE_A: u16 = 1;
/// RR type NS.
pub(crate) const TYPE_SOA: u16 = 6;
/// RR type PTR.
pub(crate) const TYPE_PTR: u16 = 12;
/// RR type OPT (EDNS).
pub(crate) const TYPE_OPT: u16 = 41;
/// Class IN.
pub(crate) const CLASS_IN: u16 = 1;
/// Largest name on the wire.
const MAX_NAME: usize = 255;

/// Lowercase wire form of `name` (labels with length bytes, terminated by the root label).
pub(crate) fn wire_lower(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(u8::try_from(label.len()).expect("invariant: a label is at most 63 bytes"));
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Uncompressed wire form of `name`, case preserved.
pub(crate) fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(u8::try_from(label.len()).expect("invariant: a label is at most 63 bytes"));
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Precomputed answer section of one RRset (owner compressed to the question name).
#[derive(Debug, Clone, Default)]
pub(crate) struct FastAnswer {
    /// Number of records in `bytes`.
    pub(crate) count: u16,
    /// The records, each starting with the pointer `0xC00C` to the question name.
    pub(crate) bytes: Vec<u8>,
}

impl FastAnswer {
    /// Adds one record of type `rtype` with `rdata` to the answer.
    pub(crate) fn push(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
        let rdlen = u16::try_from(rdata.len()).expect("invariant: rdata built by us is short");
        self.bytes.extend_from_slice(&[0xC0, 0x0C]);
        self.bytes.extend_from_slice(&rtype.to_be_bytes());
        self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.bytes.extend_from_slice(&ttl.to_be_bytes());
        self.bytes.extend_from_slice(&rdlen.to_be_bytes());
        self.bytes.extend_from_slice(rdata);
        self.count += 1;
    }
}

/// What the fast path knows about one owner name.
#[derive(Debug, Clone, Default)]
pub(crate) struct FastName {
    /// The A RRset, if the name has one.
    pub(crate) a: Option<FastAnswer>,
    /// The PTR RRset, if the name has one.
    pub(crate) ptr: Option<FastAnswer>,
}

/// Per-zone data the fast path needs for negative answers.
#[derive(Debug, Clone)]
pub(crate) struct FastZone {
    /// Length of the lowercase wire origin.
    pub(crate) origin_len: usize,
    /// SOA record for the authority section without its owner: type, class, TTL, rdlength, rdata.
    pub(crate) soa_tail: Vec<u8>,
    /// NXDOMAIN may be answered here (no wildcard, delegation or DNAME in the zone).
    pub(crate) nx_ok: bool,
}

/// The fast path's view of every authoritative zone: answers by lowercase wire name.
#[derive(Debug, Default)]
pub(crate) struct FastMap {
    /// Names whose only RRsets are A and/or PTR, with those answers.
    pub(crate) names: HashMap<Box<[u8]>, FastName>,
    /// Every existing name (owners of any record and empty non-terminals), with a reference count.
    pub(crate) exists: HashMap<Box<[u8]>, u32>,
    /// Zones by lowercase wire origin.
    pub(crate) zones: HashMap<Box<[u8]>, FastZone>,
}

/// Decision of the fast path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    /// A complete response of this many bytes is in the output buffer.
    Reply(usize),
    /// Not a case the fast path answers: hand the packet to the slow path.
    Slow,
}

/// Fields of a query the fast path accepted.
#[derive(Debug)]
struct Parsed {
    /// End of the question section.
    question_end: usize,
    /// Lowercased QNAME in wire form.
    qname: [u8; MAX_NAME],
    /// Its length.
    qname_len: usize,
    /// QTYPE.
    qtype: u16,
    /// The query carried an EDNS OPT record (version 0).
    edns: bool,
    /// UDP payload size the client accepts (512 without EDNS).
    payload: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a plain query: one question, no answer or authority records, at most an OPT record.
fn parse_simple_query(pkt: &[u8]) -> Option<Parsed> {
    if pkt.len() < HEADER_LEN {
        return None;
    }
    let flags = be16(pkt, 2)?;
    // QR=0, opcode QUERY; other bits (RD, CD, AD) are tolerated.
    if flags & 0xF800 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (be16(pkt, 4)?, be16(pkt, 6)?, be16(pkt, 8)?, be16(pkt, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut qname = [0u8; MAX_NAME];
    let mut pos = HEADER_LEN;
    let mut len = 0;
    loop {
        let l = usize::from(*pkt.get(pos)?);
        if l == 0 {
            qname[len] = 0;
            len += 1;
            pos += 1;
            break;
        }
        // Compression pointers or extended labels never appear in a sane question.
        if l > 63 || len + l + 2 > MAX_NAME {
            return None;
        }
        let label = pkt.get(pos + 1..pos + 1 + l)?;
        qname[len] = u8::try_from(l).expect("invariant: checked l <= 63 above");
        for (dst, src) in qname[len + 1..len + 1 + l].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        len += l + 1;
        pos += l + 1;
    }
    let qtype = be16(pkt, pos)?;
    let qclass = be16(pkt, pos + 2)?;
    if qclass != CLASS_IN {
        return None;
    }
    let question_end = pos + 4;
    let mut edns = false;
    let mut payload = 512;
    if ar == 1 {
        // OPT: root owner, type 41, class = payload, ttl = ext-rcode/version/flags, rdata.
        if *pkt.get(question_end)? != 0 || be16(pkt, question_end + 1)? != TYPE_OPT {
            return None;
        }
        let version = *pkt.get(question_end + 6)?;
        if version != 0 {
            return None;
        }
        let rdlen = usize::from(be16(pkt, question_end + 9)?);
        if question_end + 11 + rdlen != pkt.len() {
            return None;
        }
        edns = true;
        payload = be16(pkt, question_end + 3)?.max(512);
    } else if question_end != pkt.len() {
        return None;
    }
    Some(Parsed {
        question_end,
        qname,
        qname_len: len,
        qtype,
        edns,
        payload,
    })
}

/// Writes the response header and question into `out`; returns the write position.
fn start_response(pkt: &[u8], p: &Parsed, rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&pkt[..p.question_end]);
    // QR=1, opcode 0, AA=1, TC=0, RD copied; RA=0, Z=0, AD=0, CD copied.
    out[2] = 0x84 | (pkt[2] & 0x01);
    out[3] = (pkt[3] & 0x10) | (rcode & 0x0F);
    out[6..12].fill(0);
}

fn set_count(out: &mut [u8], at: usize, n: u16) {
    out[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

/// Appends our OPT record (version 0, no flags) advertising `payload`.
pub(crate) fn push_opt(out: &mut Vec<u8>, payload: u16) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// The fast path: answers `pkt` from `map` into `out`, or says it must go to the slow path.
pub(crate) fn fast_answer(map: &FastMap, pkt: &[u8], edns_payload: u16, out: &mut Vec<u8>) -> Fast {
    let Some(p) = parse_simple_query(pkt) else {
        return Fast::Slow;
    };
    let qname = &p.qname[..p.qname_len];
    let arcount = u16::from(p.edns);
    if let Some(entry) = map.names.get(qname) {
        let answer = match p.qtype {
            TYPE_A => entry.a.as_ref(),
            TYPE_PTR => entry.ptr.as_ref(),
            _ => None,
        };
        let Some(answer) = answer else {
            return Fast::Slow;
        };
        // Answers that need truncation are left to the slow path, which truncates.
        let size = p.question_end + answer.bytes.len() + if p.edns { 11 } else { 0 };
        if size > usize::from(p.payload.min(edns_payload.max(512))) {
            return Fast::Slow;
        }
        start_response(pkt, &p, 0, out);
        set_count(out, 6, answer.count);
        out.extend_from_slice(&answer.bytes);
        if p.edns {
            push_opt(out, edns_payload);
            set_count(out, 10, arcount);
        }
        return Fast::Reply(out.len());
    }
    // Negative answers: the longest zone containing the name, if it is one of ours.
    if map.exists.contains_key(qname) {
        return Fast::Slow;
    }
    let mut at = 0;
    while qname[at] != 0 {
        at += usize::from(qname[at]) + 1;
        let suffix = &qname[at..];
        if let Some(zone) = map.zones.get(suffix) {
            if !zone.nx_ok {
                return Fast::Slow;
            }
            debug_assert_eq!(zone.origin_len, suffix.len());
            // Below an existing name it is still NXDOMAIN: delegations, which would change
            // that, clear nx_ok.
            start_response(pkt, &p, 3, out);
            set_count(out, 8, 1);
            let ptr = 0xC000
                | u16::try_from(HEADER_LEN + at).expect("invariant: names are under 256 bytes");
            out.extend_from_slice(&ptr.to_be_bytes());
            out.extend_from_slice(&zone.soa_tail);
            if p.edns {
                push_opt(out, edns_payload);
                set_count(out, 10, arcount);
            }
            return Fast::Reply(out.len());
        }
    }
    Fast::Slow
}

/// Header fields of any message, for error responses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHeader {
    /// Message ID.
    pub(crate) id: u16,
    /// Flags word.
    pub(crate) flags: u16,
}

impl RawHeader {
    /// Reads the header, if there are 12 bytes.
    pub(crate) fn read(pkt: &[u8]) -> Option<Self> {
        if pkt.len() < HEADER_LEN {
            return None;
        }
        Some(Self {
            id: be16(pkt, 0)?,
            flags: be16(pkt, 2)?,
        })
    }

    /// The message is a response (QR set): never answer it.
    pub(crate) fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The opcode.
    pub(crate) fn opcode(&self) -> u8 {
        u8::try_from((self.flags >> 11) & 0x0F).expect("invariant: masked to 4 bits")
    }
}

/// A header-only error response (no question), as sent for undecodable queries.
pub(crate) fn error_header(h: RawHeader, rcode: u8) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&h.id.to_be_bytes());
    let opcode = h.flags & 0x7800;
    let rd = h.flags & 0x0100;
    let flags = 0x8000 | opcode | rd | u16::from(rcode & 0x0F);
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Offset just past the question section of `pkt`, if it has exactly one well-formed question.
pub(crate) fn question_end(pkt: &[u8]) -> Option<usize> {
    if be16(pkt, 4)? != 1 {
        return None;
    }
    let mut pos = HEADER_LEN;
    loop {
        let l = usize::from(*pkt.get(pos)?);
        if l == 0 {
            pos += 1;
            break;
        }
        if l > 63 {
            return None;
        }
        pos += l + 1;
    }
    (pos + 4 <= pkt.len()).then_some(pos + 4)
}

/// QTYPE of a single-question message.
pub(crate) fn qtype(pkt: &[u8]) -> Option<u16> {
    let end = question_end(pkt)?;
    be16(pkt, end - 4)
}

/// Response to `pkt` carrying only the header and question, with `rcode` and the given TC flag:
/// for truncation, refusals and rate-limit slips.
pub(crate) fn header_and_question(
    pkt: &[u8],
    rcode: u8,
    truncated: bool,
    aa: bool,
) -> Option<Vec<u8>> {
    let h = RawHeader::read(pkt)?;
    let end = question_end(pkt).unwrap_or(HEADER_LEN);
    let mut out = pkt[..end].to_vec();
    let mut flags = 0x8000 | (h.flags & 0x7900) | u16::from(rcode & 0x0F) | (h.flags & 0x0010);
    if truncated {
        flags |= 0x0200;
    }
    if aa {
        flags |= 0x0400;
    }
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    let qd = u16::from(end > HEADER_LEN);
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    Some(out)
}

/// Replaces the QTYPE of a single-question message in place.
pub(crate) fn set_qtype(pkt: &mut [u8], qtype: u16) -> bool {
    match question_end(pkt) {
        Some(end) => {
            pkt[end - 4..end - 2].copy_from_slice(&qtype.to_be_bytes());
            true
        }
        None => false,
    }
}

/// The EDNS UDP payload size a query advertises (512 without EDNS).
pub(crate) fn client_payload(pkt: &[u8]) -> u16 {
    // Walk the sections of a simple query to find the OPT record; on anything odd assume 512.
    let Some(mut pos) = question_end(pkt) else {
        return 512;
    };
    let counts = [be16(pkt, 6), be16(pkt, 8), be16(pkt, 10)];
    let total: u32 = counts.iter().map(|c| u32::from(c.unwrap_or(0))).sum();
    for _ in 0..total {
        // owner name
        loop {
            let Some(&l) = pkt.get(pos) else { return 512 };
            if l == 0 {
                pos += 1;
                break;
            }
            if l & 0xC0 == 0xC0 {
                pos += 2;
                break;
            }
            pos += usize::from(l) + 1;
        }
        let (Some(t), Some(class), Some(rdlen)) =
            (be16(pkt, pos), be16(pkt, pos + 2), be16(pkt, pos + 8))
        else {
            return 512;
        };
        if t == TYPE_OPT {
            return class.max(512);
        }
        pos += 10 + usize::from(rdlen);
    }
    512
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};

    fn map() -> FastMap {
        let mut m = FastMap::default();
        let name = Name::from_ascii("n1.rack.test.").unwrap();
        let mut a = FastAnswer::default();
        a.push(TYPE_A, 300, &[10, 0, 0, 1]);
        m.names.insert(
            wire_lower(&name).into(),
            FastName {
                a: Some(a),
                ptr: None,
            },
        );
        m.exists.insert(wire_lower(&name).into(), 1);
        let origin = Name::from_ascii("rack.test.").unwrap();
        let mut soa_tail = Vec::new();
        soa_tail.extend_from_slice(&TYPE_SOA.to_be_bytes());
        soa_tail.extend_from_slice(&CLASS_IN.to_be_bytes());
        soa_tail.extend_from_slice(&60u32.to_be_bytes());
        let mut rdata = wire(&Name::from_ascii("ns.rack.test.").unwrap());
        rdata.extend(wire(&Name::from_ascii("hostmaster.rack.test.").unwrap()));
        for v in [7u32, 3600, 600, 86400, 60] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        soa_tail.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
        soa_tail.extend(rdata);
        m.zones.insert(
            wire_lower(&origin).into(),
            FastZone {
                origin_len: wire_lower(&origin).len(),
                soa_tail,
                nx_ok: true,
            },
        );
        m
    }

    fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_a_case_insensitively_with_question_preserved() {
        let m = map();
        for edns in [false, true] {
            let q = query("N1.Rack.TEST.", RecordType::A, edns);
            let mut out = Vec::new();
            let Fast::Reply(n) = fast_answer(&m, &q, 1232, &mut out) else {
                panic!("expected a fast reply");
            };
            let r = Message::from_vec(&out[..n]).unwrap();
            assert_eq!(r.metadata.id, 4242);
            assert!(r.metadata.authoritative);
            assert!(r.metadata.recursion_desired);
            assert_eq!(r.queries[0].name().to_ascii(), "N1.Rack.TEST.");
            assert_eq!(r.answers.len(), 1);
            assert_eq!(r.answers[0].data, RData::A("10.0.0.1".parse().unwrap()));
            assert_eq!(r.edns.is_some(), edns);
        }
    }

    #[test]
    fn nxdomain_carries_soa() {
        let m = map();
        let q = query("nope.sub.rack.test.", RecordType::A, true);
        let mut out = Vec::new();
        let Fast::Reply(n) = fast_answer(&m, &q, 1232, &mut out) else {
            panic!("expected a fast reply");
        };
        let r = Message::from_vec(&out[..n]).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(r.authorities[0].name.to_ascii(), "rack.test.");
        assert!(matches!(r.authorities[0].data, RData::SOA(ref s) if s.serial == 7));
    }

    #[test]
    fn other_cases_go_slow() {
        let m = map();
        let mut out = Vec::new();
        for (name, t) in [
            ("n1.rack.test.", RecordType::AAAA),
            ("rack.test.", RecordType::SOA),
            ("example.org.", RecordType::A),
        ] {
            assert_eq!(
                fast_answer(&m, &query(name, t, false), 1232, &mut out),
                Fast::Slow
            );
        }
        assert_eq!(fast_answer(&m, &[1, 2, 3], 1232, &mut out), Fast::Slow);
    }

    #[test]
    fn helpers_on_garbage_do_not_panic() {
        for len in 0..40 {
            let pkt: Vec<u8> = (0..len)
                .map(|i: usize| u8::try_from(i * 37 % 251).unwrap())
                .collect();
            let _ = client_payload(&pkt);
            let _ = header_and_question(&pkt, 1, false, false);
            let _ = qtype(&pkt);
        }
    }
}
