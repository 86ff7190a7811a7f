//! The listener: other processes' notices, applied to this process's
//! tiers as they are published, with the log polled every
//! `sync_interval` for any that were missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::names::BUCKETS;
use super::notice::Notice;
use super::stamp::Stamp;
use super::tier::{boot_id, RemoteTier, MAX_BACKOFF, TYPE_NAME_CAP};
use crate::InternalCacheKey;

/// Where this process stands with the notices: the server data set it last
/// caught up with, and the last notice applied. Kept in the cache
/// directory, so that a restart catches up with what it missed meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct SyncState {
    boot: Option<String>,
    generation: u64,
    /// This cache's writer id, kept across restarts: a reopened cache
    /// knows its own notices in the log (and does not drop its own
    /// entries as if another process had replaced them).
    pub(super) writer: Option<u32>,
}

impl SyncState {
    pub(super) fn load(path: &std::path::Path) -> Self {
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
        // Private like the cache's other files (`0600`, never through a symlink).
        let written = crate::private_fs::create(&tmp)
            .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not record the remote tier's sync point");
        }
    }
}

impl RemoteTier {
    pub(super) async fn listen_forever(tier: std::sync::Weak<Self>) {
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
    pub(super) async fn listen(self: Arc<Self>) -> std::result::Result<(), String> {
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
    pub(super) async fn catch_up(&self, state: &mut SyncState) -> std::result::Result<(), String> {
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

    /// Sets every bucket's floor to the server's time, where none is set,
    /// and moves this process's clock past the newest floor: a write made
    /// from now on must not be refused as older than its floor because
    /// the clock's measured offset lags the server a little.
    pub(super) async fn set_floors(&self) -> std::result::Result<(), String> {
        let conn = self.connection().await?;
        let calls = (0..BUCKETS).map(|bucket| {
            let mut conn = conn.clone();
            let mut invocation = self.scripts.floor.prepare_invoke();
            invocation.key(self.names.floor(bucket));
            async move { invocation.invoke_async::<Vec<u8>>(&mut conn).await }
        });
        let floors = self
            .bounded(async {
                let all = futures::future::join_all(calls).await;
                all.into_iter()
                    .collect::<redis::RedisResult<Vec<Vec<u8>>>>()
            })
            .await?;
        // Garbage far ahead in one bucket must not hide the others' floors.
        let newest = floors
            .iter()
            .filter_map(|f| Stamp::parse(f))
            .filter(|f| self.stamps.plausible(*f))
            .max();
        if let Some(floor) = newest {
            self.stamps.observe(floor);
        }
        Ok(())
    }

    pub(super) async fn resync_clear(&self) {
        tracing::info!("the remote tier's notices could not be replayed; local tiers cleared");
        if let Some(local) = self.local.get() {
            local.drop_prefix(String::new()).await;
        }
        self.counters.resync_clears.incr();
    }

    /// Applies another process's notice to the local tiers.
    pub(super) async fn apply(&self, notice: &Notice) {
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
