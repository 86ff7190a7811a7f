//! The shared tier's counters and their snapshot.

use serde::Serialize;

use crate::stats::Counter;

#[derive(Default)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct RemoteCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub read_errors: Counter,
    pub skipped_disconnected: Counter,
    pub refused: Counter,
    pub records_sent: Counter,
    pub record_bytes_sent: Counter,
    pub fences_sent: Counter,
    pub invalidations_sent: Counter,
    pub not_sent_full: Counter,
    pub not_sent_failed: Counter,
    pub not_sent_superseded: Counter,
    pub not_sent_stale: Counter,
    pub not_sent_encode: Counter,
    pub notices_sent: Counter,
    pub notices_applied: Counter,
    pub peer_keys_dropped: Counter,
    pub peer_prefixes_dropped: Counter,
    pub resync_clears: Counter,
    pub reconnects: Counter,
    pub unreachable_at_start: Counter,
}

/// Why writes to the shared tier were not sent (or not stored).
///
/// ```
/// let n = spillway::RemoteNotSent::default();
/// assert_eq!(n.total(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteNotSent {
    /// The send queue's bytes were taken (the key's fence went instead).
    pub queue_full: u64,
    /// The server did not answer in time or failed the write.
    pub failed: u64,
    /// A newer version of the key was queued, or stored by another process.
    pub superseded: u64,
    /// Older than the server's data set (it restarted empty) or than the
    /// time to live: refused by the server.
    pub stale: u64,
    /// The codec failed to encode it (write-through).
    pub encode_failed: u64,
}

impl RemoteNotSent {
    /// All of them.
    ///
    /// ```
    /// let n = spillway::RemoteNotSent { queue_full: 2, failed: 1, ..Default::default() };
    /// assert_eq!(n.total(), 3);
    /// ```
    pub fn total(&self) -> u64 {
        self.queue_full + self.failed + self.superseded + self.stale + self.encode_failed
    }
}

/// The shared (remote) tier's statistics; all zero without one.
///
/// ```
/// let s = spillway::RemoteStats::default();
/// assert!(!s.enabled && s.hits == 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteStats {
    /// A remote tier is configured (and the feature built).
    pub enabled: bool,
    /// The last call to the server succeeded and this process has caught up
    /// with the notices it could have missed: remote reads are on.
    pub connected: bool,
    /// Reads served from the server (verified, then promoted locally).
    pub hits: u64,
    /// Reads the server had nothing (current) for.
    pub misses: u64,
    /// Reads that failed or timed out (misses for the caller).
    pub read_errors: u64,
    /// Reads not sent because the server was unreachable or this process
    /// had not caught up yet.
    pub skipped: u64,
    /// Values found on the server that did not verify (garbage, another
    /// key's record, an undecodable payload): misses.
    pub refused: u64,
    /// Records stored on the server, and their bytes.
    pub records_sent: u64,
    /// Bytes of those records.
    pub record_bytes_sent: u64,
    /// Fences stored (a replacement that had no record to send).
    pub fences_sent: u64,
    /// Prefix invalidations (and clears) delivered.
    pub invalidations_sent: u64,
    /// Writes not sent or not stored, by reason.
    pub not_sent: RemoteNotSent,
    /// Fences widened into prefix invalidations (too many keys waited).
    pub fences_widened: u64,
    /// Notices published to other processes.
    pub notices_sent: u64,
    /// Notices of other processes applied here.
    pub notices_applied: u64,
    /// Local versions dropped because another process replaced the key.
    pub peer_keys_dropped: u64,
    /// Local prefix invalidations (and clears) done for other processes.
    pub peer_prefixes_dropped: u64,
    /// Local clears because notices were missed beyond the server's log.
    pub resync_clears: u64,
    /// Times the connection was lost and found again.
    pub reconnects: u64,
    /// The server could not be reached when the cache was built.
    pub unreachable_at_start: u64,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl RemoteCounters {
    pub(crate) fn snapshot(&self, enabled: bool, connected: bool, widened: u64) -> RemoteStats {
        RemoteStats {
            enabled,
            connected,
            hits: self.hits.get(),
            misses: self.misses.get(),
            read_errors: self.read_errors.get(),
            skipped: self.skipped_disconnected.get(),
            refused: self.refused.get(),
            records_sent: self.records_sent.get(),
            record_bytes_sent: self.record_bytes_sent.get(),
            fences_sent: self.fences_sent.get(),
            invalidations_sent: self.invalidations_sent.get(),
            not_sent: RemoteNotSent {
                queue_full: self.not_sent_full.get(),
                failed: self.not_sent_failed.get(),
                superseded: self.not_sent_superseded.get(),
                stale: self.not_sent_stale.get(),
                encode_failed: self.not_sent_encode.get(),
            },
            fences_widened: widened,
            notices_sent: self.notices_sent.get(),
            notices_applied: self.notices_applied.get(),
            peer_keys_dropped: self.peer_keys_dropped.get(),
            peer_prefixes_dropped: self.peer_prefixes_dropped.get(),
            resync_clears: self.resync_clears.get(),
            reconnects: self.reconnects.get(),
            unreachable_at_start: self.unreachable_at_start.get(),
        }
    }
}
