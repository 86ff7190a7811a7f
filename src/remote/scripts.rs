//! The server-side checks, as Lua scripts: each runs atomically on the
//! server, and touches only keys of one hash tag (see `names`), so each
//! works the same on a single server and on a Redis Cluster.
//!
//! A stored value is a 24-digit stamp (see `stamp`) followed by the sealed
//! record; a value that is only a stamp is a *fence*: the key was replaced
//! by a version that is not (yet) on the server, so older records of it
//! must not be served or written.

/// Stores a record or fence unless the key already holds a newer one, or
/// the stamp predates its bucket's floor (written before the server last
/// started empty, so it may predate an invalidation the server forgot).
/// The key expires `ttl` after its stamp, not after the write: a queued
/// write cannot outlive the invalidation entries that would hide it.
///
/// KEYS: record, floor. ARGV: stamp, ttl in microseconds, record bytes
/// (empty: a fence). Returns 1 stored, 0 older than what is there, -1
/// before the floor, -2 already expired.
pub(crate) const WRITE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Our keys: anything else found under them (another writer's garbage)
-- is replaced.
for _, k in ipairs(KEYS) do
  local kind = redis.call('TYPE', k).ok
  if kind ~= 'none' and kind ~= 'string' then redis.call('DEL', k) end
end
local floor = redis.call('GET', KEYS[2])
if floor and #floor ~= 24 then floor = nil end
if not floor then
  floor = string.format('%016x', now) .. '00000000'
  redis.call('SET', KEYS[2], floor)
end
if ARGV[1] < floor then return -1 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local stamp = string.sub(cur, 1, 24)
  if stamp > ARGV[1] then return 0 end
  if stamp == ARGV[1] and (#ARGV[3] == 0 or #cur > 24) then return 0 end
end
local deadline = tonumber(string.sub(ARGV[1], 1, 16), 16) + tonumber(ARGV[2])
if deadline <= now then return -2 end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[3], 'PXAT', math.floor(deadline / 1000))
return 1
"#;

/// Reads a record, unless it is a fence or an invalidation of one of its
/// key's prefixes is newer than it. The invalidations checked are the
/// table's entries that are prefixes of the key's prefix: by looking each
/// entry up when the table is small, else each prefix of the key's prefix
/// (only those no longer than the table's longest entry), so a read costs
/// O(min(entries, prefix length)) lookups.
///
/// KEYS: record, its bucket's invalidations. ARGV: the key's prefix.
/// Returns the stored value, nil, or `!` for a value that is not one of
/// ours (another writer's garbage: a counted refusal).
pub(crate) const READ: &str = r#"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return false end
if kind ~= 'string' then return '!' end
local v = redis.call('GET', KEYS[1])
if #v <= 24 then return false end
if redis.call('TYPE', KEYS[2]).ok ~= 'hash' then return v end
local n = redis.call('HLEN', KEYS[2])
if n == 0 then return v end
local stamp = string.sub(v, 1, 24)
local p = ARGV[1]
if n <= #p + 1 then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local f = all[i]
    if #f <= #p and string.sub(p, 1, #f) == f and all[i + 1] > stamp then return false end
  end
else
  for i = 0, #p do
    local e = redis.call('HGET', KEYS[2], string.sub(p, 1, i))
    if e and e > stamp then return false end
  end
end
return v
"#;

/// Records an invalidation of a prefix in one bucket, and forgets those
/// older than the time to live (every record they could hide has expired).
///
/// KEYS: the bucket's invalidations. ARGV: prefix, stamp, ttl in
/// microseconds.
pub(crate) const INVALIDATE: &str = r#"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then redis.call('DEL', KEYS[1]) end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or cur < ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local t = redis.call('TIME')
local horizon = tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(ARGV[3])
if horizon > 0 then
  local h = string.format('%016x', horizon) .. '00000000'
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i + 1] < h then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return 1
"#;

/// The meta keys' checks, shared by NOTICE and SYNC: a generation that is
/// not a number, a log that is not a list or a data-set identity that is
/// not 16 characters is damage (another writer's), and starts a new data
/// set: every process then catches up by clearing.
const META_GUARD: &str = r#"
local function guard(gen, boot, log, candidate)
  local g = redis.call('TYPE', gen).ok
  if g ~= 'none' and (g ~= 'string' or not tonumber(redis.call('GET', gen))) then
    redis.call('DEL', gen, boot, log)
  end
  if log and redis.call('TYPE', log).ok ~= 'none' and redis.call('TYPE', log).ok ~= 'list' then
    redis.call('DEL', gen, boot, log)
  end
  local b = redis.call('TYPE', boot).ok
  if b ~= 'none' and (b ~= 'string' or #redis.call('GET', boot) ~= 16) then
    redis.call('DEL', gen, boot)
    if log then redis.call('DEL', log) end
  end
  local id = redis.call('GET', boot)
  if not id then
    id = candidate
    redis.call('SET', boot, id)
  end
  return id
end
"#;

/// Numbers a notice, keeps it in the log and publishes it. A message is
/// the generation (16 hex digits), the data set's identity (16
/// characters), then the notice: a listener ignores messages of another
/// data set (another database of the same server).
///
/// KEYS: generation, log, boot. ARGV: notice bytes, log capacity, channel,
/// a boot id to set if none is. Returns {generation, boot id}.
pub(crate) fn notice_script() -> String {
    format!("{META_GUARD}{NOTICE_BODY}")
}

const NOTICE_BODY: &str = r#"
local boot = guard(KEYS[1], KEYS[3], KEYS[2], ARGV[4])
local g = redis.call('INCR', KEYS[1])
local m = string.format('%016x', g) .. boot .. ARGV[1]
redis.call('LPUSH', KEYS[2], m)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PUBLISH', ARGV[3], m)
return {g, boot}
"#;

/// Sets a bucket's floor to the server's time unless it has one.
///
/// KEYS: floor. Returns the floor (a 24-digit stamp), set now or before:
/// the caller stamps its later writes after it, so that none of them is
/// refused as older than the floor because its clock lags the server's.
pub(crate) const FLOOR: &str = r#"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  local floor = redis.call('GET', KEYS[1])
  if #floor == 24 then return floor end
end
if kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local t = redis.call('TIME')
local floor = string.format('%016x', tonumber(t[1]) * 1000000 + tonumber(t[2])) .. '00000000'
redis.call('SET', KEYS[1], floor)
return floor
"#;

/// Reads where the notices stand, giving the data set an identity if it
/// has none yet (a server that started empty).
///
/// KEYS: generation, boot, log. ARGV: a boot id to set if none is. Returns
/// {generation, boot id}.
pub(crate) fn sync_script() -> String {
    format!("{META_GUARD}{SYNC_BODY}")
}

const SYNC_BODY: &str = r#"
local boot = guard(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return {tonumber(redis.call('GET', KEYS[1]) or '0'), boot}
"#;

/// The integration tests' real-server helper, shared.
#[cfg(test)]
#[path = "../../tests/common/redis_server.rs"]
#[allow(dead_code)]
mod test_server;

#[cfg(test)]
mod tests {
    //! The scripts against a real `redis-server` (the integration tests'
    //! helper starts one on a unix socket).
    use super::test_server as redis_server;

    use redis::Script;

    fn stamp(micros: u64) -> String {
        format!("{micros:016x}{:08x}", 1)
    }

    fn now_micros() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    }

    const DAY: u64 = 86_400_000_000;

    async fn write(conn: &mut redis::aio::MultiplexedConnection, stamp: &str, body: &[u8]) -> i64 {
        Script::new(super::WRITE)
            .key("r")
            .key("floor")
            .arg(stamp)
            .arg(DAY)
            .arg(body)
            .invoke_async(conn)
            .await
            .unwrap()
    }

    async fn read(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Option<Vec<u8>> {
        Script::new(super::READ)
            .key("r")
            .key("inv")
            .arg(prefix)
            .invoke_async(conn)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_keeps_the_newest_write_of_a_key_whatever_order_they_arrive_in() {
        let server = redis_server::RedisServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let before = now_micros();
        let floor: String = Script::new(super::FLOOR)
            .key("floor")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let set_at = u64::from_str_radix(&floor[..16], 16).unwrap();
        assert!(floor.len() == 24 && set_at + 1_000_000 >= before, "{floor}");
        // Asked again, it answers the floor it set, not a new one.
        let again: String = Script::new(super::FLOOR)
            .key("floor")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(again, floor);
        let t = now_micros() + 1_000_000;
        // Before the floor: refused.
        assert_eq!(write(&mut conn, &stamp(t - 60_000_000), b"early").await, -1);
        assert_eq!(write(&mut conn, &stamp(t + 10), b"newer").await, 1);
        // An older record arriving later: refused.
        assert_eq!(write(&mut conn, &stamp(t + 5), b"older").await, 0);
        assert_eq!(read(&mut conn, "p").await.unwrap()[24..], *b"newer");
        // A fence of a newer version hides the record; an older record
        // cannot come back over it; its own record replaces it.
        assert_eq!(write(&mut conn, &stamp(t + 20), b"").await, 1);
        assert_eq!(read(&mut conn, "p").await, None);
        assert_eq!(write(&mut conn, &stamp(t + 10), b"newer").await, 0);
        assert_eq!(write(&mut conn, &stamp(t + 20), b"fenced").await, 1);
        // Its fence sent again after it does not hide it.
        assert_eq!(write(&mut conn, &stamp(t + 20), b"").await, 0);
        assert_eq!(read(&mut conn, "p/q").await.unwrap()[24..], *b"fenced");
        // An invalidation of a prefix of the key's prefix, newer than the
        // record, hides it; an older one does not.
        let inv_conn = conn.clone();
        let invalidate = |prefix: &'static str, at: u64| {
            let mut conn = inv_conn.clone();
            async move {
                let _: i64 = Script::new(super::INVALIDATE)
                    .key("inv")
                    .arg(prefix)
                    .arg(stamp(at))
                    .arg(DAY)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
            }
        };
        invalidate("p/x", t + 30).await;
        invalidate("p", t + 15).await;
        assert!(read(&mut conn, "p/q").await.is_some());
        invalidate("p/", t + 30).await;
        assert_eq!(read(&mut conn, "p/q").await, None);
        assert!(read(&mut conn, "other").await.is_some());
        // A record stamped after the invalidation is served.
        assert_eq!(write(&mut conn, &stamp(t + 40), b"after").await, 1);
        assert_eq!(read(&mut conn, "p/q").await.unwrap()[24..], *b"after");
        // A write whose time to live ran out before it arrived: refused.
        assert_eq!(
            write(&mut conn, &stamp(t + 50 - 2 * DAY), b"late").await,
            -1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_expire_a_time_to_live_after_their_stamp() {
        let server = redis_server::RedisServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let t = now_micros() + 1_000_000;
        let stored: i64 = Script::new(super::WRITE)
            .key("r")
            .key("floor")
            .arg(stamp(t))
            .arg(10_000_000u64)
            .arg(&b"v"[..])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, 1);
        let ttl: i64 = redis::cmd("PTTL")
            .arg("r")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 11_000, "{ttl}");
        // Already past its time to live when it arrives.
        let stale: i64 = Script::new(super::WRITE)
            .key("r2")
            .key("floor")
            .arg(stamp(t - 20_000_000))
            .arg(10_000_000u64)
            .arg(&b"v"[..])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(stale < 0, "{stale}");
    }
}
