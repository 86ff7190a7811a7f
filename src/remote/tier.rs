//! The shared tier's client: reads, the sender of queued writes, and the
//! listener that applies other processes' notices here.
//!
//! The client is the `redis` crate (tokio, with its reconnecting
//! `ConnectionManager`): it is the reference Rust client, kept by Redis
//! itself, multiplexes concurrent calls on one connection (a read never
//! waits for a write to finish), and speaks the cluster protocol too.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::connection::{Connection, Connector};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::Script;
use tokio::sync::Notify;

use super::counters::RemoteCounters;
use super::names::{Names, BUCKETS, LOG_CAP};
use super::notice::Notice;
use super::outbox::{Body, Outbox, Refused};
use super::stamp::{Stamp, Stamps, STAMP_LEN};
use super::{LocalTiers, RemoteConfig, WritePolicy};
use crate::placement::Resident;
use crate::{Error, InternalCacheKey, Result};

/// Writes sent per round.
const BATCH_KEYS: usize = 256;
/// Type names of other processes' notices interned at most.
const TYPE_NAME_CAP: usize = 4096;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Scripts {
    write: Script,
    read: Script,
    invalidate: Script,
    notice: Script,
    sync: Script,
    floor: Script,
}

/// Where this process stands with the notices: the server data set it last
/// caught up with, and the last notice applied. Kept in the cache
/// directory, so that a restart catches up with what it missed meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
struct SyncState {
    boot: Option<String>,
    generation: u64,
    /// This cache's writer id, kept across restarts: a reopened cache
    /// knows its own notices in the log (and does not drop its own
    /// entries as if another process had replaced them).
    writer: Option<u32>,
}

impl SyncState {
    fn load(path: &std::path::Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        let mut parts = text.split_whitespace();
        let (boot, generation) = (parts.next(), parts.next().and_then(|g| g.parse().ok()));
        let writer = parts.next().and_then(|w| w.parse().ok());
        match (boot, generation) {
            (Some(boot), Some(generation)) => Self {
                boot: Some(boot.to_string()),
                generation,
                writer,
            },
            _ => Self {
                writer,
                ..Self::default()
            },
        }
    }

    fn save(&self, path: &std::path::Path) {
        let Some(boot) = &self.boot else { return };
        let tmp = path.with_extension("tmp");
        let line = format!("{boot} {} {}\n", self.generation, self.writer.unwrap_or(0));
        let written = std::fs::write(&tmp, line).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not record the remote tier's sync point");
        }
    }
}

pub(crate) struct RemoteTier {
    /// One client per address given, tried in turn for the subscription.
    subscribers: Vec<redis::Client>,
    connector: Connector,
    names: Names,
    config: RemoteConfig,
    stamps: Stamps,
    scripts: Scripts,
    outbox: Mutex<Outbox>,
    /// A notice whose changes are on the server but which was not published.
    unpublished: Mutex<Notice>,
    wake: Arc<Notify>,
    /// Held by whoever is sending a round, so that `flush` waits for one
    /// in flight.
    sending: tokio::sync::Mutex<()>,
    pub(crate) counters: RemoteCounters,
    /// Connected and caught up with the notices: remote reads are on.
    ready: tokio::sync::watch::Sender<bool>,
    local: OnceLock<Box<dyn LocalTiers>>,
    sync_file: PathBuf,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("url", &self.config.url)
            .field("namespace", &self.config.namespace)
            .finish()
    }
}

fn remote_error(config: &RemoteConfig, op: &'static str, message: impl ToString) -> Error {
    Error::Remote {
        url: config.url.to_string(),
        op,
        // The client's messages may quote the address it was given.
        message: super::config::redact(&message.to_string())
            .replace(config.url.expose(), &config.url.to_string()),
    }
}

impl RemoteTier {
    /// Connects (lazily: a server that is down now is retried in the
    /// background). With `required`, a server that does not answer within
    /// the start-up probe fails the build.
    pub(crate) async fn open(config: &RemoteConfig, sync_file: PathBuf) -> Result<Arc<Self>> {
        config.validate()?;
        let urls = config.urls();
        let root_cert = match &config.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| Error::io("read remote.tls_ca_file", path, e))?,
            ),
            None => None,
        };
        // Notices are published cluster-wide: any node serves them.
        let subscribers = urls
            .iter()
            .map(|url| super::connection::client(url, root_cert.as_deref()))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| remote_error(config, "parse url", e))?;
        let timeout = config.timeout.0;
        let connector = Connector::new(
            &urls,
            config.cluster,
            root_cert.as_deref(),
            timeout,
            MAX_BACKOFF,
        )
        .map_err(|e| remote_error(config, "connect", e))?;
        let writer = SyncState::load(&sync_file)
            .writer
            .filter(|w| *w != 0)
            .unwrap_or_else(rand_u32);
        let tier = Arc::new(Self {
            subscribers,
            connector,
            names: Names::new(&config.namespace),
            config: config.clone(),
            stamps: Stamps::new(writer),
            scripts: Scripts {
                write: Script::new(super::scripts::WRITE),
                read: Script::new(super::scripts::READ),
                invalidate: Script::new(super::scripts::INVALIDATE),
                notice: Script::new(&super::scripts::notice_script()),
                sync: Script::new(&super::scripts::sync_script()),
                floor: Script::new(super::scripts::FLOOR),
            },
            // A read is bounded by the timeout: delivered writes count for
            // reads that long, and then some.
            outbox: Mutex::new(Outbox::new(
                config.queue.as_usize(),
                (config.timeout.0 * 4).max(Duration::from_secs(10)),
            )),
            unpublished: Mutex::new(Notice {
                writer,
                ..Notice::default()
            }),
            wake: Arc::new(Notify::new()),
            sending: tokio::sync::Mutex::new(()),
            counters: RemoteCounters::default(),
            ready: tokio::sync::watch::Sender::new(false),
            local: OnceLock::new(),
            sync_file,
        });
        // The start-up probe: a little longer than one call's bound, since
        // it includes connecting.
        let probe = timeout.max(Duration::from_millis(500));
        match tokio::time::timeout(probe, tier.calibrate()).await {
            Ok(Ok(())) => {}
            outcome => {
                let message = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {probe:?}"),
                };
                if config.required {
                    return Err(remote_error(config, "reach the server", message));
                }
                tier.counters.unreachable_at_start.incr();
                tracing::warn!(url = %config.url, error = %super::config::redact(&message), "the remote tier is unreachable; the cache runs on its local tiers and keeps retrying");
            }
        }
        Ok(tier)
    }

    /// Starts the sender and the listener; `local` is where other
    /// processes' notices take effect.
    pub(crate) fn start(
        self: &Arc<Self>,
        local: Box<dyn LocalTiers>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.local.set(local);
        let sender = tokio::spawn(Self::send_forever(
            Arc::downgrade(self),
            self.wake.clone(),
            self.config.sync_interval.0,
        ));
        let listener = tokio::spawn(Self::listen_forever(Arc::downgrade(self)));
        vec![sender, listener]
    }

    /// Waits (at most `within`) until this process has connected and
    /// caught up with the notices; whether it has.
    pub(crate) async fn wait_ready(&self, within: Duration) -> bool {
        if self.is_ready() {
            return true;
        }
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(within, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The start-up bound: a little longer than one call's, since it
    /// includes connecting.
    pub(crate) fn probe_time(&self) -> Duration {
        self.config.timeout.0.max(Duration::from_millis(500)) * 4
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Fences widened into invalidations, and records replaced while queued.
    pub(crate) fn outbox_counts(&self) -> (u64, u64) {
        let outbox = self.outbox.lock();
        (outbox.widened, outbox.superseded)
    }

    /// A stamp for a new local version.
    pub(crate) fn next_stamp(&self) -> u64 {
        self.stamps.next().micros
    }

    fn stamp_of(&self, micros: u64) -> Stamp {
        Stamp {
            micros,
            writer: self.stamps.writer(),
        }
    }

    fn ttl_micros(&self) -> u64 {
        self.config.ttl.0.as_micros() as u64
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, String> {
        match tokio::time::timeout(self.config.timeout.0, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(super::config::redact(&e.to_string())),
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout.0)),
        }
    }

    /// A connection for one call (connecting first, within the timeout).
    async fn connection(&self) -> std::result::Result<Connection, String> {
        self.bounded(self.connector.get()).await
    }

    /// Moves the stamp clock onto the server's.
    async fn calibrate(&self) -> std::result::Result<(), String> {
        let mut conn = self.connection().await?;
        let sent = Stamps::local_now();
        let (secs, micros): (u64, u64) = self
            .bounded(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        let received = Stamps::local_now();
        self.stamps
            .calibrate(secs * 1_000_000 + micros, sent, received);
        Ok(())
    }

    /// Reads `key`'s record: `Some((stamp, sealed record))`, verified by
    /// the server against invalidations and by this process against its
    /// own undelivered writes; the caller verifies the envelope.
    pub(crate) async fn read(&self, key: &InternalCacheKey) -> Option<(Stamp, Bytes)> {
        if !self.is_ready() {
            self.counters.skipped_disconnected.incr();
            return None;
        }
        let bucket = Names::bucket_of(key);
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .key(self.names.record(key))
            .key(self.names.invalidations(bucket))
            .arg(key.prefix());
        // Only a failure of the connection turns remote reads off; an
        // error the server returns for this one call does not.
        let value = match self.connection().await {
            Ok(mut conn) => {
                let call = invocation.invoke_async::<Option<Vec<u8>>>(&mut conn);
                match tokio::time::timeout(self.config.timeout.0, call).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => {
                        let connection = e.is_io_error()
                            || e.is_timeout()
                            || e.is_connection_dropped()
                            || e.is_connection_refusal();
                        Err((super::config::redact(&e.to_string()), connection))
                    }
                    Err(_) => Err((
                        format!("no answer within {:?}", self.config.timeout.0),
                        true,
                    )),
                }
            }
            Err(e) => Err((e, true)),
        };
        let value: Option<Vec<u8>> = match value {
            Ok(value) => value,
            Err((e, connection)) => {
                self.counters.read_errors.incr();
                tracing::debug!(key = %key, error = %e, "remote read failed; treated as a miss");
                if connection {
                    self.lost_connection();
                }
                return None;
            }
        };
        // Not one of ours (the script's marker for another writer's value).
        if value.as_deref() == Some(b"!") {
            self.counters.refused.incr();
            return None;
        }
        let Some(value) = value else {
            self.counters.misses.incr();
            return None;
        };
        let Some(stamp) = value
            .get(..STAMP_LEN)
            .and_then(Stamp::parse)
            .filter(|s| self.stamps.plausible(*s))
        else {
            self.counters.refused.incr();
            return None;
        };
        // This process replaced the key (or invalidated it) and has not
        // told the server yet.
        if self
            .outbox
            .lock()
            .undelivered(key)
            .is_some_and(|mine| mine > stamp)
        {
            self.counters.misses.incr();
            return None;
        }
        let mut value = Bytes::from(value);
        let record = value.split_off(STAMP_LEN);
        Some((stamp, record))
    }

    /// A value read from the server did not verify.
    pub(crate) fn refused(&self) {
        self.counters.refused.incr();
    }

    /// A value read from the server verified: its stamp is real.
    pub(crate) fn hit(&self, stamp: u64) {
        self.counters.hits.incr();
        self.stamps.observe(self.stamp_of(stamp));
    }

    /// A new local version (stamp `res.stamp`). A `replacement` sends its
    /// fence (with write-through, the version itself) and is announced; a
    /// loader's result is only written through (`on_insert`), unannounced.
    pub(crate) fn inserted(&self, key: &InternalCacheKey, res: &Arc<Resident>, replacement: bool) {
        let stamp = self.stamp_of(res.stamp);
        {
            let mut outbox = self.outbox.lock();
            match (self.config.write_policy, res.codec.is_some()) {
                (WritePolicy::OnInsert, true) => {
                    let body = Body::Unsealed(res.clone());
                    match outbox.record(key, stamp, body, replacement) {
                        Err(Refused::Full) => self.counters.not_sent_full.incr(),
                        Err(Refused::Superseded) => self.counters.not_sent_superseded.incr(),
                        Ok(()) => {}
                    }
                }
                _ if replacement => outbox.fence(key, stamp),
                _ => return,
            }
        }
        self.wake.notify_one();
    }

    /// `key` was removed here: older versions elsewhere are dead.
    pub(crate) fn removed(&self, key: &InternalCacheKey) {
        let stamp = self.stamps.next();
        self.outbox.lock().fence(key, stamp);
        self.wake.notify_one();
    }

    /// A version was sealed for the local disk (`write_policy = on_spill`:
    /// it goes to the server too).
    pub(crate) fn spilled(&self, key: &InternalCacheKey, stamp: u64, record: Bytes) {
        if stamp == 0 || self.config.write_policy != WritePolicy::OnSpill {
            return;
        }
        let refused =
            self.outbox
                .lock()
                .record(key, self.stamp_of(stamp), Body::Record(record), false);
        match refused {
            Ok(()) => self.wake.notify_one(),
            Err(Refused::Full) => {
                self.counters.not_sent_full.incr();
                self.wake.notify_one();
            }
            Err(Refused::Superseded) => self.counters.not_sent_superseded.incr(),
        }
    }

    /// Invalidates `prefix` (the empty prefix: everything) on the server
    /// now, within the timeout; if the server does not take it, it is
    /// retried in the background, and until then this process reads
    /// nothing under the prefix from the server.
    pub(crate) async fn invalidate(&self, prefix: &str) {
        let stamp = self.stamps.next();
        if self.deliver_invalidation(prefix, stamp).await.is_ok() {
            self.counters.invalidations_sent.incr();
            self.unpublished
                .lock()
                .prefixes
                .push((prefix.to_string(), stamp.micros));
            self.publish().await;
        } else {
            self.outbox.lock().invalidation(prefix, stamp);
            self.wake.notify_one();
        }
    }

    async fn deliver_invalidation(
        &self,
        prefix: &str,
        stamp: Stamp,
    ) -> std::result::Result<(), String> {
        let text = stamp.text();
        let ttl = self.ttl_micros();
        let conn = self.connection().await?;
        let calls = (0..BUCKETS).map(|bucket| {
            let mut conn = conn.clone();
            let mut invocation = self.scripts.invalidate.prepare_invoke();
            invocation
                .key(self.names.invalidations(bucket))
                .arg(prefix)
                .arg(&text)
                .arg(ttl);
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        });
        let results = self.bounded(async {
            let all = futures::future::join_all(calls).await;
            all.into_iter().collect::<redis::RedisResult<Vec<i64>>>()
        });
        results.await.map(|_| ()).inspect_err(|e| {
            tracing::warn!(prefix, error = %e, "remote invalidation not delivered; retried in the background");
        })
    }

    /// Publishes what is on the server but not yet announced.
    async fn publish(&self) {
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

    /// A call failed: reads stop until the listener has reconnected and
    /// caught up.
    fn lost_connection(&self) {
        self.ready.send_replace(false);
    }

    /// Sends whenever woken, and every `sync_interval` to retry what
    /// failed. Holds the tier only while sending: dropping the cache ends it.
    async fn send_forever(tier: std::sync::Weak<Self>, wake: Arc<Notify>, interval: Duration) {
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
    async fn send_round(&self) {
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
    async fn send(&self, batch: super::outbox::Batch) -> bool {
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
        if !all_ok {
            self.lost_connection();
        }
        all_ok
    }

    async fn listen_forever(tier: std::sync::Weak<Self>) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(20);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(this) = tier.upgrade() else { return };
            let started = Instant::now();
            let outcome = this.clone().listen().await;
            // A connection that lasted is a fresh start for the backoff.
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = FIRST_BACKOFF;
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    this.lost_connection();
                    tracing::debug!(error = %e, "remote tier connection lost; reconnecting");
                }
            }
            drop(this);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if let Some(this) = tier.upgrade() {
                this.counters.reconnects.incr();
            }
        }
    }

    /// Subscribes, catches up, then applies notices as they come and polls
    /// the log every `sync_interval`. Returns an error when the connection
    /// is lost; `Ok` only when the cache is gone.
    async fn listen(self: Arc<Self>) -> std::result::Result<(), String> {
        let weak = Arc::downgrade(&self);
        let timeout = self.config.timeout.0.max(Duration::from_millis(500));
        let mut pubsub = None;
        let mut failure = String::from("no address");
        for client in &self.subscribers {
            match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
                Ok(Ok(p)) => {
                    pubsub = Some(p);
                    break;
                }
                Ok(Err(e)) => failure = super::config::redact(&e.to_string()),
                Err(_) => failure = "pub/sub connection timed out".to_string(),
            }
        }
        let mut pubsub = pubsub.ok_or(failure)?;
        tokio::time::timeout(timeout, pubsub.subscribe(self.names.channel()))
            .await
            .map_err(|_| "subscribe timed out".to_string())?
            .map_err(|e| super::config::redact(&e.to_string()))?;
        let mut state = SyncState::load(&self.sync_file);
        state.writer = Some(self.stamps.writer());
        self.calibrate().await?;
        self.catch_up(&mut state).await?;
        self.ready.send_replace(true);
        let interval = self.config.sync_interval.0;
        drop(self);
        let mut messages = pubsub.into_on_message();
        loop {
            let next = tokio::time::timeout(interval, messages.next()).await;
            let Some(this) = weak.upgrade() else {
                return Ok(());
            };
            match next {
                Ok(Some(message)) => {
                    let payload = message.get_payload_bytes();
                    let ours = |boot: &str| state.boot.as_deref() == Some(boot);
                    match Notice::decode(payload) {
                        // Another data set's (another database of the same
                        // server shares the channel): not ours. If ours
                        // changed, the next poll finds out.
                        Some((_, boot, _)) if !ours(boot) => {}
                        Some((generation, _, notice)) if generation == state.generation + 1 => {
                            this.apply(&notice).await;
                            state.generation = generation;
                        }
                        Some((generation, _, _)) if generation <= state.generation => {}
                        // Missed one (or garbage): the log has what counts.
                        _ => this.catch_up(&mut state).await?,
                    }
                }
                Ok(None) => return Err("pub/sub connection closed".into()),
                Err(_) => {
                    this.catch_up(&mut state).await?;
                    if !this.is_ready() {
                        // A call failed meanwhile; it works again.
                        this.calibrate().await?;
                        this.ready.send_replace(true);
                    }
                    state.save(&this.sync_file);
                }
            }
        }
    }

    /// Applies every notice published since `state`, from the log; if the
    /// log no longer reaches back that far, or the server's data set is
    /// not the one `state` knew, clears the local tiers (counted): they may
    /// hold versions invalidated meanwhile.
    async fn catch_up(&self, state: &mut SyncState) -> std::result::Result<(), String> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.sync.prepare_invoke();
        invocation
            .key(self.names.generation())
            .key(self.names.boot())
            .key(self.names.log())
            .arg(boot_id());
        let (generation, boot): (u64, String) =
            self.bounded(invocation.invoke_async(&mut conn)).await?;
        let same_data_set = state.boot.as_deref() == Some(boot.as_str());
        if !same_data_set || generation < state.generation {
            // A data set new to this process (maybe new altogether): every
            // bucket gets its floor now, before this process sends anything.
            self.set_floors().await?;
            // A cache joining for the first time (no sync point kept) has
            // nothing from this data set to distrust.
            if state.boot.is_some() {
                self.resync_clear().await;
            }
            *state = SyncState {
                boot: Some(boot),
                generation,
                writer: state.writer,
            };
            state.save(&self.sync_file);
            return Ok(());
        }
        if generation == state.generation {
            return Ok(());
        }
        let missed = (generation - state.generation) as isize;
        let entries: Vec<Vec<u8>> = self
            .bounded(
                redis::cmd("LRANGE")
                    .arg(self.names.log())
                    .arg(0)
                    .arg(missed - 1)
                    .query_async(&mut conn),
            )
            .await?;
        let mut notices: Vec<(u64, Notice)> = entries
            .iter()
            .filter_map(|e| Notice::decode(e))
            .filter(|(_, b, _)| *b == boot)
            .map(|(g, _, n)| (g, n))
            .collect();
        notices.sort_by_key(|(g, _)| *g);
        let covered = notices
            .first()
            .is_some_and(|(g, _)| *g <= state.generation + 1);
        if !covered {
            self.resync_clear().await;
        } else {
            for (g, notice) in notices {
                if g > state.generation {
                    self.apply(&notice).await;
                }
            }
        }
        state.generation = generation;
        state.save(&self.sync_file);
        Ok(())
    }

    /// Sets every bucket's floor to the server's time, where none is set.
    async fn set_floors(&self) -> std::result::Result<(), String> {
        let conn = self.connection().await?;
        let calls = (0..BUCKETS).map(|bucket| {
            let mut conn = conn.clone();
            let mut invocation = self.scripts.floor.prepare_invoke();
            invocation.key(self.names.floor(bucket));
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        });
        self.bounded(async {
            let all = futures::future::join_all(calls).await;
            all.into_iter().collect::<redis::RedisResult<Vec<i64>>>()
        })
        .await
        .map(|_| ())
    }

    async fn resync_clear(&self) {
        tracing::info!("the remote tier's notices could not be replayed; local tiers cleared");
        if let Some(local) = self.local.get() {
            local.drop_prefix(String::new()).await;
        }
        self.counters.resync_clears.incr();
    }

    /// Applies another process's notice to the local tiers.
    async fn apply(&self, notice: &Notice) {
        if notice.writer == self.stamps.writer() {
            return;
        }
        let Some(local) = self.local.get() else {
            return;
        };
        self.counters.notices_applied.incr();
        let observe = |stamp: Stamp| {
            if self.stamps.plausible(stamp) {
                self.stamps.observe(stamp);
            }
        };
        for (prefix, micros) in &notice.prefixes {
            observe(Stamp {
                micros: *micros,
                writer: notice.writer,
            });
            self.counters.peer_prefixes_dropped.incr();
            local.drop_prefix(prefix.clone()).await;
        }
        for (prefix, key, type_name, micros) in &notice.keys {
            let stamp = Stamp {
                micros: *micros,
                writer: notice.writer,
            };
            observe(stamp);
            // Type names are few; a flood of new ones from another
            // process drops the key's whole prefix here instead.
            let Some(type_name) = crate::journal::interned(type_name, TYPE_NAME_CAP) else {
                self.counters.peer_prefixes_dropped.incr();
                local.drop_prefix(prefix.clone()).await;
                continue;
            };
            let key = InternalCacheKey::new(prefix.as_str(), key.as_str(), type_name);
            // This process wrote the key after that: its own write wins.
            if self
                .outbox
                .lock()
                .undelivered(&key)
                .is_some_and(|mine| mine > stamp)
            {
                continue;
            }
            self.counters.peer_keys_dropped.incr();
            local.drop_key(key, stamp.micros).await;
        }
    }
}

/// A random id: the writer id of this instance, or the identity offered
/// to a server data set that has none.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

fn boot_id() -> String {
    format!("{:08x}{:08x}", rand_u32(), rand_u32())
}
