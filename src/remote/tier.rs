//! The shared tier's client: reads, the sender of queued writes, and the
//! listener that applies other processes' notices here.
//!
//! The client is the `redis` crate (tokio, with its reconnecting
//! `ConnectionManager`): it is the reference Rust client, kept by Redis
//! itself, multiplexes concurrent calls on one connection (a read never
//! waits for a write to finish), and speaks the cluster protocol too.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::connection::{Connection, Connector};
use bytes::Bytes;
use parking_lot::Mutex;
use redis::Script;
use tokio::sync::Notify;

use super::counters::RemoteCounters;
use super::names::{Names, BUCKETS};
use super::notice::Notice;
use super::outbox::{Body, Outbox, Refused};
use super::stamp::{Stamp, Stamps, STAMP_LEN};
use super::{LocalTiers, RemoteConfig, WritePolicy};
use crate::placement::Resident;
use crate::{Error, InternalCacheKey, Result};

/// Writes sent per round.
pub(super) const BATCH_KEYS: usize = 256;
/// Type names of other processes' notices interned at most.
pub(super) const TYPE_NAME_CAP: usize = 4096;
/// Longest wait between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) struct Scripts {
    pub(super) write: Script,
    pub(super) read: Script,
    pub(super) invalidate: Script,
    pub(super) notice: Script,
    pub(super) sync: Script,
    pub(super) floor: Script,
}

pub(crate) struct RemoteTier {
    /// One client per address given, tried in turn for the subscription.
    pub(super) subscribers: Vec<redis::Client>,
    pub(super) connector: Connector,
    pub(super) names: Names,
    pub(super) config: RemoteConfig,
    pub(super) stamps: Stamps,
    pub(super) scripts: Scripts,
    pub(super) outbox: Mutex<Outbox>,
    /// A notice whose changes are on the server but which was not published.
    pub(super) unpublished: Mutex<Notice>,
    pub(super) wake: Arc<Notify>,
    /// Held by whoever is sending a round, so that `flush` waits for one
    /// in flight.
    pub(super) sending: tokio::sync::Mutex<()>,
    pub(crate) counters: RemoteCounters,
    /// Connected and caught up with the notices: remote reads are on.
    pub(super) ready: tokio::sync::watch::Sender<bool>,
    pub(super) local: OnceLock<Box<dyn LocalTiers>>,
    pub(super) sync_file: PathBuf,
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
        let writer = super::listener::SyncState::load(&sync_file)
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

    pub(super) fn stamp_of(&self, micros: u64) -> Stamp {
        Stamp {
            micros,
            writer: self.stamps.writer(),
        }
    }

    pub(super) fn ttl_micros(&self) -> u64 {
        self.config.ttl.0.as_micros() as u64
    }

    pub(super) async fn bounded<T>(
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
    pub(super) async fn connection(&self) -> std::result::Result<Connection, String> {
        self.bounded(self.connector.get()).await
    }

    /// Moves the stamp clock onto the server's.
    pub(super) async fn calibrate(&self) -> std::result::Result<(), String> {
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

    pub(super) async fn deliver_invalidation(
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

    /// A call failed: reads stop until the listener has reconnected and
    /// caught up.
    pub(super) fn lost_connection(&self) {
        self.ready.send_replace(false);
    }
}

/// A random id: the writer id of this instance, or the identity offered
/// to a server data set that has none.
pub(super) fn rand_u32() -> u32 {
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

pub(super) fn boot_id() -> String {
    format!("{:08x}{:08x}", rand_u32(), rand_u32())
}
