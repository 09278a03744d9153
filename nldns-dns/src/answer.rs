//! Turning an upstream reply into a stored answer (miss path, via hickory-proto):
//! classify it, pick its lifetime (positive: smallest TTL within [min, max];
//! negative: RFC 2308 from the SOA; SERVFAIL: fixed), clamp every record's TTL to
//! that lifetime, drop the OPT (it belongs to the upstream hop), encode, and find
//! the TTL offsets for the hot path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::RData;
use thiserror::Error;

use super::cache::{AnswerKind, CachedAnswer};
use super::wire;

/// Lifetimes for one route.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub negative_max_ttl: u32,
    pub servfail_ttl: u32,
}

impl TtlPolicy {
    pub fn new(min: Duration, max: Duration, negative_max: Duration, servfail: Duration) -> Self {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        TtlPolicy {
            min_ttl: secs(min),
            max_ttl: secs(max),
            negative_max_ttl: secs(negative_max),
            servfail_ttl: secs(servfail),
        }
    }
}

/// An answer ready to hand out, and whether it may be cached.
#[derive(Debug)]
pub struct Prepared {
    pub answer: Arc<CachedAnswer>,
    pub cacheable: bool,
    pub rcode: ResponseCode,
}

#[derive(Debug, Error)]
pub enum PrepareError {
    #[error("encoding the answer: {0}")]
    Encode(String),
    #[error("walking the encoded answer: {0}")]
    Wire(#[from] wire::WireError),
}

/// Classifies and encodes an upstream reply (already matched to our question).
pub fn prepare(
    mut msg: Message,
    policy: &TtlPolicy,
    now: Instant,
) -> Result<Prepared, PrepareError> {
    let rcode = msg.metadata.response_code;
    let records = || {
        msg.answers
            .iter()
            .chain(&msg.authorities)
            .chain(&msg.additionals)
    };
    let (kind, ttl, cacheable) = match rcode {
        ResponseCode::NoError if !msg.answers.is_empty() => {
            let smallest = records().map(|r| r.ttl).min().unwrap_or(0);
            let ttl = smallest.max(policy.min_ttl).min(policy.max_ttl);
            (AnswerKind::Positive, ttl, ttl > 0)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            // RFC 2308 section 5: without an SOA, a negative answer is not cached.
            let soa_ttl = msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            let ttl = soa_ttl.unwrap_or(0).min(policy.negative_max_ttl);
            (AnswerKind::Negative, ttl, soa_ttl.is_some() && ttl > 0)
        }
        ResponseCode::ServFail => (
            AnswerKind::ServFail,
            policy.servfail_ttl,
            policy.servfail_ttl > 0,
        ),
        // REFUSED, NOTIMP, extended codes...: passed on, never cached.
        _ => (AnswerKind::ServFail, 0, false),
    };
    let cacheable = cacheable && !msg.metadata.truncation;
    let floor = if kind == AnswerKind::Positive {
        policy.min_ttl
    } else {
        0
    };
    for record in msg
        .answers
        .iter_mut()
        .chain(msg.authorities.iter_mut())
        .chain(msg.additionals.iter_mut())
    {
        record.ttl = record.ttl.max(floor).min(ttl);
    }
    msg.metadata.id = 0;
    msg.edns = None;
    msg.signature = None;
    let wire = msg
        .to_vec()
        .map_err(|e| PrepareError::Encode(e.to_string()))?;
    let ttl_offsets = wire::ttl_offsets(&wire)?;
    let answer = CachedAnswer::new(&wire, &ttl_offsets, kind, ttl, now)
        .ok_or_else(|| PrepareError::Encode("answer longer than 65535 bytes".into()))?;
    Ok(Prepared {
        answer,
        cacheable,
        rcode,
    })
}

/// Our own SERVFAIL for `query`, stored like an upstream one (RFC 9520: cache
/// resolution failures too, so an outage is not hammered).
pub fn servfail(query: Query, ttl: u32, now: Instant) -> Result<Arc<CachedAnswer>, PrepareError> {
    let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
    msg.metadata.response_code = ResponseCode::ServFail;
    msg.metadata.recursion_available = true;
    msg.add_query(query);
    let wire = msg
        .to_vec()
        .map_err(|e| PrepareError::Encode(e.to_string()))?;
    CachedAnswer::new(&wire, &[], AnswerKind::ServFail, ttl, now)
        .ok_or_else(|| PrepareError::Encode("answer longer than 65535 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    fn policy() -> TtlPolicy {
        TtlPolicy {
            min_ttl: 5,
            max_ttl: 30,
            negative_max_ttl: 5,
            servfail_ttl: 2,
        }
    }

    fn reply(rcode: ResponseCode) -> Message {
        let name = Name::from_ascii("a.example.").unwrap();
        let mut msg = Message::response(7, OpCode::Query);
        msg.metadata.response_code = rcode;
        msg.add_query(Query::query(name, RecordType::A));
        msg
    }

    fn a_record(ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            ttl,
            RData::A(A::new(10, 0, 0, 1)),
        )
    }

    fn soa_record(ttl: u32, minimum: u32) -> Record {
        let name = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(name.clone(), name.clone(), 1, 60, 60, 600, minimum);
        Record::from_rdata(name, ttl, RData::SOA(soa))
    }

    fn ttls(answer: &CachedAnswer) -> Vec<u32> {
        answer
            .ttl_offsets()
            .iter()
            .map(|&o| {
                let o = usize::from(o);
                u32::from_be_bytes(answer.wire()[o..o + 4].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn positive_ttl_is_smallest_clamped_to_min_and_max() {
        let now = Instant::now();
        let mut msg = reply(ResponseCode::NoError);
        msg.add_answer(a_record(300));
        msg.add_answer(a_record(20));
        let p = prepare(msg.clone(), &policy(), now).unwrap();
        assert_eq!(
            (p.answer.kind(), p.answer.ttl(), p.cacheable),
            (AnswerKind::Positive, 20, true)
        );
        assert_eq!(
            ttls(&p.answer),
            vec![20, 20],
            "records clamped to the entry's life"
        );
        msg.answers[1].ttl = 1;
        let p = prepare(msg.clone(), &policy(), now).unwrap();
        assert_eq!(p.answer.ttl(), 5, "floored by min_ttl");
        assert_eq!(ttls(&p.answer), vec![5, 5]);
        msg.answers[1].ttl = 1000;
        let p = prepare(msg, &policy(), now).unwrap();
        assert_eq!(p.answer.ttl(), 30, "capped by max_ttl");
        assert_eq!(&p.answer.wire()[..2], &[0, 0], "ID zeroed");
    }

    #[test]
    fn negative_ttl_comes_from_the_soa() {
        let now = Instant::now();
        let mut msg = reply(ResponseCode::NXDomain);
        msg.add_authority(soa_record(3, 60));
        let p = prepare(msg, &policy(), now).unwrap();
        assert_eq!(
            (p.answer.kind(), p.answer.ttl(), p.cacheable),
            (AnswerKind::Negative, 3, true)
        );
        // NODATA: min(SOA TTL 60, MINIMUM 4) = 4.
        let mut msg = reply(ResponseCode::NoError);
        msg.add_authority(soa_record(60, 4));
        let p = prepare(msg, &policy(), now).unwrap();
        assert_eq!((p.answer.kind(), p.answer.ttl()), (AnswerKind::Negative, 4));
        assert_eq!(ttls(&p.answer), vec![4]);
        // Capped at negative_max_ttl.
        let mut msg = reply(ResponseCode::NXDomain);
        msg.add_authority(soa_record(600, 600));
        assert_eq!(prepare(msg, &policy(), now).unwrap().answer.ttl(), 5);
        // No SOA: not cacheable.
        let p = prepare(reply(ResponseCode::NXDomain), &policy(), now).unwrap();
        assert!(!p.cacheable);
    }

    #[test]
    fn servfail_and_others() {
        let now = Instant::now();
        let p = prepare(reply(ResponseCode::ServFail), &policy(), now).unwrap();
        assert_eq!(
            (p.answer.kind(), p.answer.ttl(), p.cacheable),
            (AnswerKind::ServFail, 2, true)
        );
        let p = prepare(reply(ResponseCode::Refused), &policy(), now).unwrap();
        assert!(!p.cacheable);
        let ours = servfail(reply(ResponseCode::NoError).queries[0].clone(), 2, now).unwrap();
        assert_eq!(wire::rcode(ours.wire()), wire::RCODE_SERVFAIL);
    }
}
