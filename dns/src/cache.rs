//! A cache of forwarded answers (CoreDNS's `cache 30` in kubeadm's Corefile): keyed by question,
//! kept for the smallest TTL of the answer (the SOA minimum for negative answers), at most
//! [`MAX_TTL`], served with TTLs counted down and the client's id and question spelling.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// Longest time an answer is kept (kubeadm's `cache 30`).
pub const MAX_TTL: Duration = Duration::from_secs(30);

type Key = (String, RecordType, DNSClass);

struct Entry {
    stored: Instant,
    ttl: Duration,
    response: Message,
}

/// Forwarded answers by question.
pub struct Cache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
}

fn key(m: &Message) -> Option<Key> {
    let [q] = m.queries.as_slice() else {
        return None;
    };
    Some((
        q.name().to_ascii().to_ascii_lowercase(),
        q.query_type(),
        q.query_class(),
    ))
}

impl Cache {
    /// An empty cache of at most `capacity` questions.
    pub fn new(capacity: usize) -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The cached answer to `request`, if fresh: its id, flags and question from the request,
    /// its TTLs reduced by the time it was kept.
    pub fn get(&self, request: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(request).ok()?;
        let k = key(&req)?;
        let mut resp = {
            let entries = self.entries.lock().ok()?;
            let e = entries.get(&k)?;
            let age = e.stored.elapsed();
            if age >= e.ttl {
                return None;
            }
            let mut r = e.response.clone();
            let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
            for rec in r
                .answers
                .iter_mut()
                .chain(r.authorities.iter_mut())
                .chain(r.additionals.iter_mut())
            {
                rec.ttl = rec.ttl.saturating_sub(age);
            }
            r
        };
        resp.metadata.id = req.metadata.id;
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.queries = req.queries;
        resp.to_vec().ok()
    }

    /// Keeps the upstream's `response` to `request` when it is cacheable (NOERROR or NXDOMAIN,
    /// not truncated).
    pub fn put(&self, request: &[u8], response: &[u8]) {
        let (Ok(req), Ok(resp)) = (Message::from_vec(request), Message::from_vec(response)) else {
            return;
        };
        let Some(k) = key(&req) else { return };
        if resp.metadata.truncation
            || !matches!(
                resp.metadata.response_code,
                ResponseCode::NoError | ResponseCode::NXDomain
            )
        {
            return;
        }
        let ttl = if resp.answers.is_empty() {
            // Negative answers: the SOA's minimum (RFC 2308), bounded by the SOA's own TTL.
            resp.authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(s) => Some(s.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(0)
        } else {
            resp.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        };
        let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_TTL);
        if ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.stored.elapsed() < e.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            k,
            Entry {
                stored: Instant::now(),
                ttl,
                response: resp,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m.to_vec().expect("encode")
    }

    fn answer(id: u16, name: &str, ttl: u32, rcode: ResponseCode) -> Vec<u8> {
        let n = Name::from_ascii(name).expect("name");
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(n.clone(), RecordType::A));
        if rcode == ResponseCode::NoError {
            m.add_answer(Record::from_rdata(
                n,
                ttl,
                RData::A(A([192, 0, 2, 1].into())),
            ));
        } else {
            let soa = SOA::new(n.clone(), n.clone(), 1, 1, 1, 1, ttl);
            m.add_authority(Record::from_rdata(n, 300, RData::SOA(soa)));
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn serves_a_kept_answer_with_the_clients_id_and_spelling() {
        let c = Cache::new(10);
        c.put(
            &query(1, "example.org."),
            &answer(1, "example.org.", 300, ResponseCode::NoError),
        );
        let bytes = c.get(&query(2, "EXAMPLE.org.")).expect("cached");
        let m = Message::from_vec(&bytes).expect("decode");
        assert_eq!(m.metadata.id, 2);
        assert_eq!(m.queries[0].name().to_ascii(), "EXAMPLE.org.");
        assert_eq!(m.answers.len(), 1);
        assert!(m.answers[0].ttl <= 300);
        assert!(c.get(&query(3, "example.net.")).is_none());
    }

    #[test]
    fn negative_answers_are_kept_for_the_soa_minimum_and_errors_not_at_all() {
        let c = Cache::new(10);
        c.put(
            &query(1, "nosuch.example."),
            &answer(1, "nosuch.example.", 10, ResponseCode::NXDomain),
        );
        let m = Message::from_vec(&c.get(&query(2, "nosuch.example.")).expect("cached"))
            .expect("decode");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        c.put(
            &query(1, "broken.example."),
            &answer(1, "broken.example.", 10, ResponseCode::ServFail),
        );
        assert!(c.get(&query(2, "broken.example.")).is_none());
        // TTL 0: not kept.
        c.put(
            &query(1, "zero.example."),
            &answer(1, "zero.example.", 0, ResponseCode::NoError),
        );
        assert!(c.get(&query(2, "zero.example.")).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = Cache::new(2);
        for i in 0..5 {
            let name = format!("h{i}.example.");
            c.put(
                &query(1, &name),
                &answer(1, &name, 60, ResponseCode::NoError),
            );
        }
        assert!(c.entries.lock().expect("lock").len() <= 2);
    }
}
