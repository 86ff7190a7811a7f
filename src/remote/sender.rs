//! The sender: queued writes and invalidations go out in rounds, then the
//! notice that tells the other processes what changed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::InternalCacheKey;

use super::names::{Names, LOG_CAP};
use super::notice::Notice;
use super::outbox::Body;
use super::stamp::Stamp;
use super::tier::{boot_id, RemoteTier, BATCH_KEYS};

impl RemoteTier {
    /// Publishes what is on the server but not yet announced.
    pub(super) async fn publish(&self) {
        let notice = {
            let mut pending = self.unpublished.lock();
            if pending.is_empty() {
                return;
            }
            let writer = pending.writer;
            std::mem::replace(
                &mut *pending,
                Notice {
                    writer,
                    ..Notice::default()
                },
            )
        };
        let mut invocation = self.scripts.notice.prepare_invoke();
        invocation
            .key(self.names.generation())
            .key(self.names.log())
            .key(self.names.boot())
            .arg(notice.encode())
            .arg(LOG_CAP)
            .arg(self.names.channel())
            .arg(boot_id());
        let published = match self.connection().await {
            Ok(mut conn) => {
                self.bounded(invocation.invoke_async::<(u64, String)>(&mut conn))
                    .await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(_) => self.counters.notices_sent.incr(),
            Err(e) => {
                tracing::debug!(error = %e, "notice not published; retried");
                let mut pending = self.unpublished.lock();
                pending.prefixes.extend(notice.prefixes);
                pending.keys.extend(notice.keys);
            }
        }
    }

    /// Sends whenever woken, and every `sync_interval` to retry what
    /// failed. Holds the tier only while sending: dropping the cache ends it.
    pub(super) async fn send_forever(
        tier: std::sync::Weak<Self>,
        wake: Arc<Notify>,
        interval: Duration,
    ) {
        loop {
            {
                let Some(this) = tier.upgrade() else { return };
                this.send_round().await;
            }
            // A wake-up sent while the round ran is kept as a permit.
            let _ = tokio::time::timeout(interval, wake.notified()).await;
        }
    }

    /// Sends everything queued so far (see `TwoTierCacheBackend::sync_remote`).
    pub(crate) async fn flush(&self) {
        // Reconnecting: sending waits for it, within one call's bound.
        self.wait_ready(self.config.timeout.0).await;
        self.send_round().await;
    }

    /// Sends everything queued; on failure waits a little before the next round.
    pub(super) async fn send_round(&self) {
        let _sending = self.sending.lock().await;
        // Not before catching up: after the server restarted empty, its
        // floors must be set before anything stamped earlier arrives.
        if !self.is_ready() {
            return;
        }
        loop {
            let batch = self.outbox.lock().take(BATCH_KEYS);
            if batch.keys.is_empty() && batch.prefixes.is_empty() {
                break;
            }
            let ok = self.send(batch).await;
            self.publish().await;
            if !ok {
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
        }
        self.publish().await;
    }

    /// Sends one batch; `false` if any of it failed.
    pub(super) async fn send(&self, batch: super::outbox::Batch) -> bool {
        let ttl = self.ttl_micros();
        let local = self.local.get();
        let conn = self.connection().await;
        let calls = batch.keys.iter().map(|(key, out)| {
            let record = match &out.body {
                Body::Fence => Some(Bytes::new()),
                Body::Record(bytes) => Some(bytes.clone()),
                Body::Unsealed(res) => local.and_then(|l| l.seal(key, res)),
            };
            let sealed_ok = record.is_some();
            let record = record.unwrap_or_default();
            let conn = conn.clone();
            let bucket = Names::bucket_of(key);
            let mut invocation = self.scripts.write.prepare_invoke();
            invocation
                .key(self.names.record(key))
                .key(self.names.floor(bucket))
                .arg(out.stamp.text())
                .arg(ttl)
                .arg(record.as_ref());
            let is_record = !record.is_empty();
            let len = record.len();
            async move {
                let result = match conn {
                    Ok(mut conn) => {
                        self.bounded(invocation.invoke_async::<i64>(&mut conn))
                            .await
                    }
                    Err(e) => Err(e),
                };
                (result, is_record, len, sealed_ok)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut sent_keys = Vec::new();
        let mut failed_keys = Vec::new();
        let mut all_ok = true;
        let mut notice_keys = Vec::new();
        let mut below_floor = Vec::new();
        for ((key, out), (result, is_record, len, sealed_ok)) in batch.keys.iter().zip(results) {
            sent_keys.push((key.clone(), out.stamp));
            if !sealed_ok {
                self.counters.not_sent_encode.incr();
            }
            match result {
                Ok(1) => {
                    if is_record {
                        self.counters.records_sent.incr();
                        self.counters.record_bytes_sent.add(len as u64);
                    } else {
                        self.counters.fences_sent.incr();
                    }
                    if out.announce {
                        notice_keys.push((key.clone(), out.stamp));
                    }
                }
                Ok(0) => self.counters.not_sent_superseded.incr(),
                Ok(-1) => {
                    self.counters.not_sent_stale.incr();
                    below_floor.push((key.clone(), out.stamp));
                }
                Ok(_) => self.counters.not_sent_stale.incr(),
                Err(e) => {
                    all_ok = false;
                    if is_record {
                        self.counters.not_sent_failed.incr();
                    }
                    tracing::debug!(key = %key, error = %e, "remote write failed; its fence is retried");
                    failed_keys.push((key.clone(), out.stamp, out.announce));
                }
            }
        }
        let mut failed_prefixes = Vec::new();
        for (prefix, stamp) in &batch.prefixes {
            if self.deliver_invalidation(prefix, *stamp).await.is_ok() {
                self.counters.invalidations_sent.incr();
                self.unpublished
                    .lock()
                    .prefixes
                    .push((prefix.clone(), stamp.micros));
            } else {
                all_ok = false;
                failed_prefixes.push((prefix.clone(), *stamp));
            }
        }
        {
            let mut notice = self.unpublished.lock();
            for (key, stamp) in &notice_keys {
                notice.add_key(key, *stamp);
            }
        }
        self.outbox
            .lock()
            .answered(&sent_keys, &batch.prefixes, &failed_keys, &failed_prefixes);
        self.forget_below_floor(below_floor).await;
        if !all_ok {
            self.lost_connection();
        }
        all_ok
    }

    /// Drops this process's own versions that the server refused as older
    /// than their bucket's floor (written before the server restarted
    /// empty): no other process will ever see them, so keeping them here
    /// would leave this process serving a value the rest of the fleet
    /// never agrees on. A newer write of the key, queued meanwhile, stays.
    async fn forget_below_floor(&self, refused: Vec<(InternalCacheKey, Stamp)>) {
        let Some(local) = self.local.get() else {
            return;
        };
        for (key, stamp) in refused {
            let newer_queued = self
                .outbox
                .lock()
                .undelivered(&key)
                .is_some_and(|queued| queued > stamp);
            if !newer_queued {
                // `drop_key` keeps a version at least as new as the stamp
                // it is given: one past ours keeps only newer ones.
                local.drop_key(key, stamp.micros.saturating_add(1)).await;
            }
        }
    }
}
