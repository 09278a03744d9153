//! Hand-written DNS wire helpers for the cache-hit hot path, and only for it.
//!
//! A hit needs the client's ID, its question (exact bytes, for the 0x20 case echo),
//! qtype/qclass and its EDNS UDP size / DO bit, and then a copy of the stored answer
//! with the ID, question case and TTLs patched. Decoding the query and the stored
//! answer with hickory-proto, editing and re-encoding costs about 12x more (see
//! `benches/cache_hit.rs` and the numbers on `render_answer`).
//!
//! Here: the query parser, the answer patcher, the TTL-offset finder that builds the
//! stored form (run once per stored answer, on bytes hickory-proto encoded), and the
//! header-plus-question replies the same parse makes possible without a decode
//! (FORMERR, SERVFAIL, TC=1, the heartbeat's NXDOMAIN). Everything else on the miss
//! path (upstream replies, upstream queries) goes through hickory-proto.
//!
//! Every read is bounds-checked: network input never panics here.

use thiserror::Error;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// RR type of the EDNS(0) OPT pseudo-record.
pub const TYPE_OPT: u16 = 41;
/// The UDP payload size we advertise in our OPT records (DNS flag day 2020 value).
pub const OUR_EDNS_UDP_SIZE: u16 = 1232;
/// EDNS option code of Extended DNS Errors (RFC 8914) ...
const OPTION_EDE: u16 = 15;
/// ... and its info-code "Stale Answer".
pub const EDE_STALE_ANSWER: u16 = 3;
/// Largest UDP answer for a client that sent no EDNS (RFC 1035).
pub const PLAIN_UDP_LIMIT: usize = 512;
/// Longest domain name in wire form (RFC 1035 section 2.3.4).
pub const MAX_NAME_LEN: usize = 255;

// Header flag bits (second 16-bit word).
pub const FLAG_QR: u16 = 0x8000;
pub const FLAG_AA: u16 = 0x0400;
pub const FLAG_TC: u16 = 0x0200;
pub const FLAG_RD: u16 = 0x0100;
pub const FLAG_RA: u16 = 0x0080;
pub const FLAG_AD: u16 = 0x0020;
pub const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_MASK: u16 = 0x000f;

/// RCODEs we synthesize (RFC 1035 / RFC 6891).
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended RCODE 16, carried as 1 in the OPT's upper RCODE bits.
pub const RCODE_BADVERS: u16 = 16;

/// Why a message could not be read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("message shorter than a DNS header")]
    NoHeader,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Why a query is not answered from the cache as-is; the caller picks the reply.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// Not even a header, or a response (QR=1): drop silently.
    #[error("unreadable or not a query")]
    Drop,
    /// The header is readable but the rest is not: answer FORMERR.
    #[error("malformed query")]
    FormErr,
    /// An opcode other than QUERY: answer NOTIMP.
    #[error("unsupported opcode")]
    NotImp,
    /// EDNS version other than 0: answer BADVERS (RFC 6891 section 6.1.3).
    #[error("unsupported EDNS version")]
    BadVers,
}

/// The client's EDNS(0) parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientEdns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
}

/// What the server needs from a client's query, read without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryInfo {
    pub id: u16,
    /// The raw flags word of the query header.
    pub flags: u16,
    /// Offset just past the question's qclass: `query[HEADER_LEN..question_end]` is the
    /// question exactly as the client wrote it.
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<ClientEdns>,
}

impl QueryInfo {
    pub fn recursion_desired(&self) -> bool {
        self.flags & FLAG_RD != 0
    }
    pub fn checking_disabled(&self) -> bool {
        self.flags & FLAG_CD != 0
    }
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
    /// Length of the question name in wire form (the name starts at `HEADER_LEN`).
    pub fn qname_len(&self) -> usize {
        self.question_end - 4 - HEADER_LEN
    }
    /// The largest answer we send this client over UDP: its EDNS size, but never
    /// more than the size we advertise ourselves (1232, avoids IP fragmentation;
    /// larger answers get TC=1 and the client retries over TCP).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size.clamp(PLAIN_UDP_LIMIT as u16, OUR_EDNS_UDP_SIZE)),
            None => PLAIN_UDP_LIMIT,
        }
    }
}

fn get(buf: &[u8], at: usize) -> Result<u8, WireError> {
    buf.get(at)
        .copied()
        .ok_or(WireError::Malformed("truncated"))
}

fn get_u16(buf: &[u8], at: usize) -> Result<u16, WireError> {
    Ok(u16::from_be_bytes([get(buf, at)?, get(buf, at + 1)?]))
}

fn get_u32(buf: &[u8], at: usize) -> Result<u32, WireError> {
    Ok(u32::from_be_bytes([
        get(buf, at)?,
        get(buf, at + 1)?,
        get(buf, at + 2)?,
        get(buf, at + 3)?,
    ]))
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    if let Some(dst) = buf.get_mut(at..at + 2) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = buf.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

/// Offset just past a (possibly compressed) name starting at `at`.
pub fn skip_name(buf: &[u8], mut at: usize) -> Result<usize, WireError> {
    // A name has at most 127 labels; the bound also stops malicious loops.
    for _ in 0..128 {
        let len = get(buf, at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(at + 1),
            0x00 => at += 1 + usize::from(len),
            0xc0 => {
                get(buf, at + 1)?;
                return Ok(at + 2);
            }
            _ => return Err(WireError::Malformed("bad label type")),
        }
    }
    Err(WireError::Malformed("too many labels"))
}

/// Reads the uncompressed question name at `HEADER_LEN` and appends it lowercased
/// (ASCII only, as DNS compares names) to `lower`. Returns the offset past it.
pub fn read_question_name(buf: &[u8], lower: &mut Vec<u8>) -> Result<usize, WireError> {
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(get(buf, at)?);
        if len & 0xc0 != 0 {
            // A pointer in the first question could only point into the header.
            return Err(WireError::Malformed("compressed question name"));
        }
        let label = buf
            .get(at..at + 1 + len)
            .ok_or(WireError::Malformed("truncated name"))?;
        lower.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
        if at - HEADER_LEN > MAX_NAME_LEN {
            return Err(WireError::Malformed("name too long"));
        }
        if len == 0 {
            return Ok(at);
        }
    }
}

/// Parses a client's query. On success, `lower_name` holds the question name
/// lowercased, in wire form (the cache key's name).
pub fn parse_query(buf: &[u8], lower_name: &mut Vec<u8>) -> Result<QueryInfo, QueryError> {
    // A fixed-size array: the constant indexes below are checked at compile time.
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(QueryError::Drop);
    };
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & FLAG_QR != 0 {
        return Err(QueryError::Drop);
    }
    if flags & OPCODE_MASK != 0 {
        return Err(QueryError::NotImp);
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if qdcount != 1 {
        return Err(QueryError::FormErr);
    }
    lower_name.clear();
    let name_end = read_question_name(buf, lower_name).map_err(|_| QueryError::FormErr)?;
    let qtype = get_u16(buf, name_end).map_err(|_| QueryError::FormErr)?;
    let qclass = get_u16(buf, name_end + 2).map_err(|_| QueryError::FormErr)?;
    let question_end = name_end + 4;

    // Walk every record after the question looking for the (single) OPT.
    let records = [6, 8, 10]
        .map(|at| usize::from(u16::from_be_bytes([header[at], header[at + 1]])))
        .iter()
        .sum::<usize>();
    let mut at = question_end;
    let mut edns = None;
    let mut bad_version = false;
    for _ in 0..records {
        let rec = read_record(buf, at).map_err(|_| QueryError::FormErr)?;
        if rec.rtype == TYPE_OPT {
            if edns.is_some() {
                return Err(QueryError::FormErr);
            }
            // OPT: CLASS = UDP size, TTL = ext-rcode(8) version(8) DO(1) Z(15).
            edns = Some(ClientEdns {
                udp_size: rec.class,
                dnssec_ok: rec.ttl & 0x8000 != 0,
            });
            bad_version = (rec.ttl >> 16) & 0xff != 0;
        }
        at = rec.end;
    }
    let info = QueryInfo {
        id,
        flags,
        question_end,
        qtype,
        qclass,
        edns,
    };
    if bad_version {
        return Err(QueryError::BadVers);
    }
    Ok(info)
}

/// The fixed fields of one resource record.
struct RecordFields {
    rtype: u16,
    class: u16,
    ttl: u32,
    /// Offset of the TTL field.
    ttl_at: usize,
    /// Offset just past the record's RDATA.
    end: usize,
}

fn read_record(buf: &[u8], at: usize) -> Result<RecordFields, WireError> {
    let fixed = skip_name(buf, at)?;
    let rtype = get_u16(buf, fixed)?;
    let class = get_u16(buf, fixed + 2)?;
    let ttl = get_u32(buf, fixed + 4)?;
    let rdlen = usize::from(get_u16(buf, fixed + 8)?);
    let end = fixed + 10 + rdlen;
    if end > buf.len() {
        return Err(WireError::Malformed("truncated rdata"));
    }
    Ok(RecordFields {
        rtype,
        class,
        ttl,
        ttl_at: fixed + 4,
        end,
    })
}

/// Offsets of the TTL field of every record of a complete message that has no OPT
/// record (the cache strips it before storing). Errors if the counts and the bytes
/// disagree, or if an OPT is present (its "TTL" is flags and must not count down).
pub fn ttl_offsets(msg: &[u8]) -> Result<Vec<u16>, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::NoHeader);
    }
    if msg.len() > usize::from(u16::MAX) {
        return Err(WireError::Malformed("message too long"));
    }
    let qd = get_u16(msg, 4)?;
    let records = usize::from(get_u16(msg, 6)?)
        + usize::from(get_u16(msg, 8)?)
        + usize::from(get_u16(msg, 10)?);
    let mut at = HEADER_LEN;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut offsets = Vec::with_capacity(records);
    for _ in 0..records {
        let rec = read_record(msg, at)?;
        if rec.rtype == TYPE_OPT {
            return Err(WireError::Malformed("OPT record in a stored answer"));
        }
        // Fits: the message is at most 65535 bytes long.
        offsets.push(rec.ttl_at as u16);
        at = rec.end;
    }
    if at != msg.len() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok(offsets)
}

/// Appends our OPT record (root owner, our UDP size, DO echoed) and bumps ARCOUNT.
/// With `ede`, the OPT carries an Extended DNS Error (RFC 8914) of that info-code.
fn push_opt(out: &mut Vec<u8>, dnssec_ok: bool, ext_rcode: u8, ede: Option<u16>) {
    out.push(0); // root owner name
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_EDNS_UDP_SIZE.to_be_bytes());
    let ttl = (u32::from(ext_rcode) << 24) | if dnssec_ok { 0x8000 } else { 0 };
    out.extend_from_slice(&ttl.to_be_bytes());
    match ede {
        Some(code) => {
            out.extend_from_slice(&6u16.to_be_bytes()); // RDLENGTH
            out.extend_from_slice(&OPTION_EDE.to_be_bytes());
            out.extend_from_slice(&2u16.to_be_bytes()); // option length
            out.extend_from_slice(&code.to_be_bytes());
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()), // no options
    }
    let arcount = get_u16(out, 10).unwrap_or(0).saturating_add(1);
    put_u16(out, 10, arcount);
}

/// A response carrying only the header and, when readable, the client's question
/// (as the client wrote it), with `rcode` and `extra_flags` set. Used for FORMERR,
/// NOTIMP, SERVFAIL, REFUSED, BADVERS, the heartbeat's NXDOMAIN and TC=1 answers.
/// `rcode` may be an extended RCODE (> 15); it then needs an OPT, which is added.
pub fn synthesize(query: &[u8], info: Option<&QueryInfo>, rcode: u16, extra_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(info.map_or(HEADER_LEN, |i| i.question_end) + 11);
    let header = query
        .first_chunk::<HEADER_LEN>()
        .unwrap_or(&[0; HEADER_LEN]);
    out.extend_from_slice(&header[..4]);
    let query_flags = u16::from_be_bytes([header[2], header[3]]);
    let flags = FLAG_QR
        | (query_flags & (OPCODE_MASK | FLAG_RD | FLAG_CD))
        | FLAG_RA
        | extra_flags
        | (rcode & RCODE_MASK);
    put_u16(&mut out, 2, flags);
    let question = info.and_then(|i| query.get(HEADER_LEN..i.question_end));
    out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    if let Some(q) = question {
        out.extend_from_slice(q);
    }
    let edns = info.and_then(|i| i.edns);
    if edns.is_some() || rcode > RCODE_MASK {
        let ext = u8::try_from(rcode >> 4).unwrap_or(0);
        push_opt(&mut out, edns.is_some_and(|e| e.dnssec_ok), ext, None);
    }
    out
}

/// How the TTLs of a stored answer are rewritten on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlPatch {
    /// Fresh answer: subtract the whole seconds it spent in the cache.
    CountDown(u32),
    /// Stale answer (RFC 8767): every TTL set to this value.
    Fixed(u32),
}

/// Builds the answer to `query` from a stored answer into `out`: the stored bytes with
/// the client's ID, RD bit and question bytes (case echo), TTLs patched, AA cleared, AD
/// cleared unless the client asked for DNSSEC data, plus our OPT when the client sent
/// one.
///
/// Measured with `cargo bench --bench cache_hit` (2 shared cores, release, a
/// 2-record A answer with EDNS): parse + lookup + this took 0.20 us per hit, the
/// same through hickory-proto decode/edit/encode 2.5 us: about 12x, which is why
/// the hot path is hand-written.
pub fn render_answer(
    out: &mut Vec<u8>,
    stored: &[u8],
    ttl_offsets: &[u16],
    query: &[u8],
    info: &QueryInfo,
    ttls: TtlPatch,
) {
    out.clear();
    out.extend_from_slice(stored);
    put_u16(out, 0, info.id);
    let stored_flags = get_u16(out, 2).unwrap_or(0);
    // A cached answer is never authoritative, whatever the upstream said.
    let mut flags = (stored_flags & !(FLAG_RD | FLAG_TC | FLAG_AA)) | (info.flags & FLAG_RD);
    if !info.dnssec_ok() && info.flags & FLAG_AD == 0 {
        // RFC 6840 section 5.8: AD only for clients that show they understand it.
        flags &= !FLAG_AD;
    }
    put_u16(out, 2, flags);
    // Same key, so the same name length: copy the client's spelling over ours.
    if let (Some(src), Some(dst)) = (
        query.get(HEADER_LEN..info.question_end),
        out.get_mut(HEADER_LEN..info.question_end),
    ) {
        dst.copy_from_slice(src);
    }
    for &at in ttl_offsets {
        let at = usize::from(at);
        let stored_ttl = get_u32(out, at).unwrap_or(0);
        let ttl = match ttls {
            TtlPatch::CountDown(elapsed) => stored_ttl.saturating_sub(elapsed),
            TtlPatch::Fixed(v) => v,
        };
        put_u32(out, at, ttl);
    }
    if let Some(edns) = info.edns {
        // RFC 8767 section 6: tell the client the answer is stale (EDE 3).
        let ede = matches!(ttls, TtlPatch::Fixed(_)).then_some(EDE_STALE_ANSWER);
        push_opt(out, edns.dnssec_ok, 0, ede);
    }
}

/// The response code of a message (low 4 bits only).
pub fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(RCODE_SERVFAIL, |b| b & 0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_bytes(name: &[u8], qtype: u16, opt: Option<(u16, bool, u8)>) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        if let Some((size, dnssec_ok, version)) = opt {
            q[11] = 1;
            q.push(0);
            q.extend_from_slice(&TYPE_OPT.to_be_bytes());
            q.extend_from_slice(&size.to_be_bytes());
            q.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn parses_query_and_lowercases_name() {
        let q = query_bytes(b"\x03WwW\x07ExAmPle\x03cOm\x00", 1, Some((4096, true, 0)));
        let mut name = Vec::new();
        let info = parse_query(&q, &mut name).unwrap();
        assert_eq!(name, b"\x03www\x07example\x03com\x00");
        assert_eq!(info.id, 0x1234);
        assert_eq!(info.qtype, 1);
        assert_eq!(info.qname_len(), name.len());
        assert_eq!(
            info.edns,
            Some(ClientEdns {
                udp_size: 4096,
                dnssec_ok: true
            })
        );
        assert_eq!(info.udp_limit(), 1232, "capped at our own EDNS size");
    }

    #[test]
    fn rejects_malformed_queries_without_panicking() {
        let mut name = Vec::new();
        assert_eq!(parse_query(&[0; 5], &mut name), Err(QueryError::Drop));
        let good = query_bytes(b"\x01a\x00", 1, Some((1232, false, 0)));
        // Every truncation of a valid query is rejected, never panics.
        for len in 0..good.len() {
            assert!(parse_query(&good[..len], &mut name).is_err(), "len {len}");
        }
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response, &mut name), Err(QueryError::Drop));
        let mut pointer = query_bytes(b"\xc0\x00", 1, None);
        assert_eq!(parse_query(&pointer, &mut name), Err(QueryError::FormErr));
        pointer[5] = 2;
        assert_eq!(parse_query(&pointer, &mut name), Err(QueryError::FormErr));
        let bad_version = query_bytes(b"\x01a\x00", 1, Some((1232, false, 1)));
        assert_eq!(
            parse_query(&bad_version, &mut name),
            Err(QueryError::BadVers)
        );
        let mut notify = good;
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify, &mut name), Err(QueryError::NotImp));
        // Random garbage never panics.
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = parse_query(&bytes, &mut name);
            let _ = ttl_offsets(&bytes);
        }
    }

    #[test]
    fn synthesized_errors_echo_question_and_opt() {
        let q = query_bytes(b"\x01A\x00", 28, Some((1232, true, 0)));
        let mut name = Vec::new();
        let info = parse_query(&q, &mut name).unwrap();
        let r = synthesize(&q, Some(&info), u16::from(RCODE_SERVFAIL), FLAG_TC);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(rcode(&r), RCODE_SERVFAIL);
        assert_ne!(get_u16(&r, 2).unwrap() & FLAG_TC, 0);
        assert_eq!(
            &r[HEADER_LEN..info.question_end],
            &q[HEADER_LEN..info.question_end]
        );
        assert_eq!(get_u16(&r, 10).unwrap(), 1, "OPT appended");
        let badvers = synthesize(&q, Some(&info), RCODE_BADVERS, 0);
        // Extended RCODE 16 = upper bits 1 in the OPT TTL, low bits 0 in the header.
        assert_eq!(rcode(&badvers), 0);
        assert_eq!(badvers[info.question_end + 5], 1);
    }
}
