//! What waits to be sent to the shared tier: per key, the latest write
//! (a record, or a fence when only the fact of a replacement must go out),
//! and the invalidations not yet delivered.
//!
//! Records may be dropped (counted) when the queue is full; fences and
//! invalidations never are, because another process could then serve a
//! version this one replaced. When too many keys wait, a key's fence is
//! widened into an invalidation of its prefix: more is dropped elsewhere,
//! nothing stale is kept.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::stamp::Stamp;
use crate::placement::Resident;
use crate::InternalCacheKey;

/// Keys whose writes may wait at once before fences are widened.
pub(crate) const KEY_CAP: usize = 100_000;
/// Undelivered invalidations kept apart before they collapse into one of
/// the empty prefix.
pub(crate) const PREFIX_CAP: usize = 1024;

/// What a key's write carries.
#[derive(Clone)]
pub(crate) enum Body {
    /// Only the stamp: older versions of the key are dead.
    Fence,
    /// A sealed record.
    Record(Bytes),
    /// A version still to be sealed (write-through: sealed by the sender,
    /// not on the inserting caller's path).
    Unsealed(Arc<Resident>),
}

impl Body {
    fn bytes(&self) -> usize {
        match self {
            Body::Fence => 0,
            Body::Record(b) => b.len(),
            // Not known before sealing: its declared size.
            Body::Unsealed(res) => res.size,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Outgoing {
    pub stamp: Stamp,
    pub body: Body,
    /// A replacement: once stored, other processes are told to drop older
    /// versions. A spilled copy of an announced version, or a loader's
    /// result, is not announced.
    pub announce: bool,
}

/// Why a record was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A newer write of the key is already waiting.
    Superseded,
    /// The queue's bytes are taken: its fence waits instead.
    Full,
}

/// One round of sending.
#[derive(Default)]
pub(crate) struct Batch {
    pub keys: Vec<(InternalCacheKey, Outgoing)>,
    pub prefixes: Vec<(String, Stamp)>,
}

#[derive(Default)]
pub(crate) struct Outbox {
    waiting: HashMap<InternalCacheKey, Outgoing>,
    bytes: usize,
    byte_cap: usize,
    prefixes: Vec<(String, Stamp)>,
    /// Taken and not yet answered: still pending for reads.
    in_flight: HashMap<InternalCacheKey, Stamp>,
    prefixes_in_flight: Vec<(String, Stamp)>,
    /// Delivered lately: a read whose answer left the server before they
    /// landed may be handled after they were answered (see `KEEP`).
    recent: HashMap<InternalCacheKey, (Stamp, std::time::Instant)>,
    recent_prefixes: Vec<(String, Stamp, std::time::Instant)>,
    /// How long delivered writes stay in `recent`: longer than any read.
    keep: std::time::Duration,
    /// Queued records replaced by a newer write of their key before they
    /// were sent.
    pub superseded: u64,
    /// Fences turned into invalidations of their prefixes.
    pub widened: u64,
}

impl Outbox {
    /// `keep`: how long a delivered write still counts for reads (more
    /// than the longest a remote read may take).
    pub(crate) fn new(byte_cap: usize, keep: std::time::Duration) -> Self {
        Self {
            byte_cap,
            keep,
            ..Self::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.prefixes.is_empty()
    }

    /// Queues a fence for a new version of `key` (announced).
    pub(crate) fn fence(&mut self, key: &InternalCacheKey, stamp: Stamp) {
        self.put(
            key,
            Outgoing {
                stamp,
                body: Body::Fence,
                announce: true,
            },
        );
    }

    /// Queues a record; refused if a newer write of the key waits, or if
    /// the bytes are taken (an announced record's fence is queued instead;
    /// an unannounced one is simply not sent).
    pub(crate) fn record(
        &mut self,
        key: &InternalCacheKey,
        stamp: Stamp,
        body: Body,
        announce: bool,
    ) -> Result<(), Refused> {
        if self.waiting.get(key).is_some_and(|w| w.stamp > stamp) {
            return Err(Refused::Superseded);
        }
        let replaced = self.waiting.get(key).map_or(0, |w| w.body.bytes());
        if self.bytes - replaced + body.bytes() > self.byte_cap {
            if announce {
                self.fence(key, stamp);
            }
            return Err(Refused::Full);
        }
        self.put(
            key,
            Outgoing {
                stamp,
                body,
                announce,
            },
        );
        Ok(())
    }

    fn put(&mut self, key: &InternalCacheKey, mut out: Outgoing) {
        if let Some(prev) = self.waiting.get(key) {
            if prev.stamp > out.stamp {
                return;
            }
            // The same version's fence, now with its record: still announced.
            if prev.stamp == out.stamp {
                out.announce |= prev.announce;
            } else if !matches!(prev.body, Body::Fence) {
                self.superseded += 1;
            }
        } else if self.waiting.len() >= KEY_CAP {
            // Only a fence must never be lost; a record alone may be.
            if out.announce {
                self.widened += 1;
                self.invalidation(key.prefix(), out.stamp);
            }
            return;
        }
        self.bytes += out.body.bytes();
        if let Some(prev) = self.waiting.insert(key.clone(), out) {
            self.bytes -= prev.body.bytes();
        }
    }

    /// Queues an invalidation (retried until delivered).
    pub(crate) fn invalidation(&mut self, prefix: &str, stamp: Stamp) {
        match self.prefixes.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, s)) => *s = (*s).max(stamp),
            None => self.prefixes.push((prefix.to_string(), stamp)),
        }
        if self.prefixes.len() > PREFIX_CAP {
            let newest = self.prefixes.iter().map(|(_, s)| *s).max();
            self.prefixes.clear();
            if let Some(stamp) = newest {
                self.prefixes.push((String::new(), stamp));
            }
        }
    }

    /// Takes up to `max_keys` writes (and every invalidation) to send.
    pub(crate) fn take(&mut self, max_keys: usize) -> Batch {
        let keys: Vec<InternalCacheKey> = self.waiting.keys().take(max_keys).cloned().collect();
        let mut batch = Batch {
            prefixes: std::mem::take(&mut self.prefixes),
            keys: Vec::with_capacity(keys.len()),
        };
        for key in keys {
            if let Some(out) = self.waiting.remove(&key) {
                self.bytes -= out.body.bytes();
                let newest = self
                    .in_flight
                    .get(&key)
                    .map_or(out.stamp, |s| (*s).max(out.stamp));
                self.in_flight.insert(key.clone(), newest);
                batch.keys.push((key, out));
            }
        }
        self.prefixes_in_flight
            .extend(batch.prefixes.iter().cloned());
        batch
    }

    /// The answer to a taken batch: what failed is queued again (fences
    /// and invalidations only; failed announced records go back as fences,
    /// others are dropped).
    pub(crate) fn answered(
        &mut self,
        batch_keys: &[(InternalCacheKey, Stamp)],
        batch_prefixes: &[(String, Stamp)],
        failed_keys: &[(InternalCacheKey, Stamp, bool)],
        failed_prefixes: &[(String, Stamp)],
    ) {
        let now = std::time::Instant::now();
        let keep = self.keep;
        if self.recent.len() >= 4096 {
            self.recent
                .retain(|_, (_, at)| now.duration_since(*at) < keep);
        }
        self.recent_prefixes
            .retain(|(_, _, at)| now.duration_since(*at) < keep);
        for (key, stamp) in batch_keys {
            if self.in_flight.get(key) == Some(stamp) {
                self.in_flight.remove(key);
            }
            let entry = self.recent.entry(key.clone()).or_insert((*stamp, now));
            *entry = (entry.0.max(*stamp), now);
        }
        for done in batch_prefixes {
            if let Some(i) = self.prefixes_in_flight.iter().position(|p| p == done) {
                self.prefixes_in_flight.swap_remove(i);
            }
            self.recent_prefixes.push((done.0.clone(), done.1, now));
        }
        for (key, stamp, announce) in failed_keys {
            if *announce {
                self.fence(key, *stamp);
            }
        }
        for (prefix, stamp) in failed_prefixes {
            self.invalidation(prefix, *stamp);
        }
    }

    /// The newest write of `key` this process has not yet delivered, or
    /// delivered lately, if any, counting invalidations that cover it: a
    /// remote record older than it is one this process already replaced.
    pub(crate) fn undelivered(&self, key: &InternalCacheKey) -> Option<Stamp> {
        let now = std::time::Instant::now();
        let fresh = |at: &std::time::Instant| now.duration_since(*at) < self.keep;
        let by_key = [
            self.waiting.get(key).map(|w| w.stamp),
            self.in_flight.get(key).copied(),
            self.recent
                .get(key)
                .filter(|(_, at)| fresh(at))
                .map(|(s, _)| *s),
        ];
        let by_prefix = self
            .prefixes
            .iter()
            .chain(&self.prefixes_in_flight)
            .filter(|(p, _)| key.starts_with(p))
            .map(|(_, s)| Some(*s));
        let lately = self
            .recent_prefixes
            .iter()
            .filter(|(p, _, at)| key.starts_with(p) && fresh(at))
            .map(|(_, s, _)| Some(*s));
        by_key
            .into_iter()
            .chain(by_prefix)
            .chain(lately)
            .flatten()
            .max()
    }

    #[cfg(test)]
    pub(crate) fn waiting_keys(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_TEST: std::time::Duration = std::time::Duration::from_secs(3600);

    fn stamp(micros: u64) -> Stamp {
        Stamp { micros, writer: 1 }
    }

    fn key(k: &str) -> InternalCacheKey {
        InternalCacheKey::new("p/", k, "T")
    }

    #[test]
    fn the_newest_write_of_a_key_wins_and_older_records_are_refused() {
        let mut out = Outbox::new(1 << 20, KEEP_TEST);
        out.fence(&key("a"), stamp(5));
        assert_eq!(
            out.record(
                &key("a"),
                stamp(4),
                Body::Record(Bytes::from_static(b"x")),
                true
            ),
            Err(Refused::Superseded)
        );
        out.record(
            &key("a"),
            stamp(5),
            Body::Record(Bytes::from_static(b"xy")),
            true,
        )
        .unwrap();
        let batch = out.take(10);
        assert_eq!(batch.keys.len(), 1);
        assert!(matches!(batch.keys[0].1.body, Body::Record(_)));
        assert_eq!(out.undelivered(&key("a")), Some(stamp(5)));
        out.answered(&[(key("a"), stamp(5))], &[], &[], &[]);
        // Delivered lately: still counts for reads in flight.
        assert_eq!(out.undelivered(&key("a")), Some(stamp(5)));
        let mut forgetful = Outbox::new(1 << 20, std::time::Duration::ZERO);
        forgetful.fence(&key("a"), stamp(5));
        forgetful.take(10);
        forgetful.answered(&[(key("a"), stamp(5))], &[], &[], &[]);
        assert_eq!(forgetful.undelivered(&key("a")), None);
    }

    #[test]
    fn a_full_queue_keeps_the_fence_of_a_record_it_refuses() {
        let mut out = Outbox::new(4, KEEP_TEST);
        let big = Body::Record(Bytes::from_static(b"12345"));
        assert_eq!(
            out.record(&key("a"), stamp(1), big, true),
            Err(Refused::Full)
        );
        let batch = out.take(10);
        assert!(matches!(batch.keys[0].1.body, Body::Fence));
    }

    #[test]
    fn failed_writes_come_back_as_fences_and_invalidations_are_retried() {
        let mut out = Outbox::new(1 << 20, KEEP_TEST);
        out.record(
            &key("a"),
            stamp(3),
            Body::Record(Bytes::from_static(b"x")),
            true,
        )
        .unwrap();
        out.invalidation("p/", stamp(4));
        let batch = out.take(10);
        assert!(out.is_empty());
        assert_eq!(out.undelivered(&key("zzz")), Some(stamp(4)));
        out.answered(
            &[(key("a"), stamp(3))],
            &batch.prefixes,
            &[(key("a"), stamp(3), true)],
            &batch.prefixes,
        );
        let again = out.take(10);
        assert!(matches!(again.keys[0].1.body, Body::Fence));
        assert_eq!(again.prefixes, vec![("p/".to_string(), stamp(4))]);
    }

    #[test]
    fn unannounced_records_are_dropped_when_full_or_failed_and_never_become_fences() {
        let mut out = Outbox::new(4, KEEP_TEST);
        let big = Body::Record(Bytes::from_static(b"12345"));
        assert_eq!(
            out.record(&key("a"), stamp(1), big, false),
            Err(Refused::Full)
        );
        assert!(out.is_empty());
        let small = Body::Record(Bytes::from_static(b"1"));
        out.record(&key("b"), stamp(2), small, false).unwrap();
        let batch = out.take(10);
        assert!(!batch.keys[0].1.announce);
        out.answered(
            &[(key("b"), stamp(2))],
            &[],
            &[(key("b"), stamp(2), false)],
            &[],
        );
        assert!(out.is_empty());
        // A record of an announced version stays announced.
        out.fence(&key("c"), stamp(3));
        let record = Body::Record(Bytes::from_static(b"1"));
        out.record(&key("c"), stamp(3), record, false).unwrap();
        let batch = out.take(10);
        assert!(batch.keys[0].1.announce && matches!(batch.keys[0].1.body, Body::Record(_)));
    }

    #[test]
    fn too_many_waiting_keys_widen_into_prefix_invalidations() {
        let mut out = Outbox::new(usize::MAX, KEEP_TEST);
        for i in 0..KEY_CAP + 3 {
            out.fence(&key(&i.to_string()), stamp(i as u64 + 1));
        }
        assert_eq!(out.waiting_keys(), KEY_CAP);
        assert_eq!(out.widened, 3);
        let far = InternalCacheKey::new("p/x", "never-written", "T");
        assert_eq!(out.undelivered(&far), Some(stamp(KEY_CAP as u64 + 3)));
    }

    #[test]
    fn too_many_invalidations_collapse_into_one_of_everything() {
        let mut out = Outbox::new(1, KEEP_TEST);
        for i in 0..=PREFIX_CAP {
            out.invalidation(&format!("p{i}"), stamp(i as u64 + 10));
        }
        let batch = out.take(0);
        assert_eq!(
            batch.prefixes,
            vec![(String::new(), stamp(PREFIX_CAP as u64 + 10))]
        );
    }
}
