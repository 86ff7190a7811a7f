//! The `[remote]` section: where the shared tier lives and how it is used.
//! Parsed with or without the `redis` feature, so a config file means the
//! same to every build; a build without the feature refuses to use it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ByteSize, Millis};

/// A server address that may carry a password (`redis://user:secret@host`).
/// Its `Debug` and `Display` forms, its serialized form and every error
/// that names it show `***` in place of the password.
///
/// ```
/// let url = spillway::RemoteUrl::new("redis://app:hunter2@127.0.0.1:6379/0");
/// assert_eq!(url.to_string(), "redis://app:***@127.0.0.1:6379/0");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// assert_eq!(url.expose(), "redis://app:hunter2@127.0.0.1:6379/0");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RemoteUrl(String);

impl RemoteUrl {
    /// Wraps an address: `redis://`, `rediss://` (TLS) or `redis+unix://`.
    ///
    /// ```
    /// let url = spillway::RemoteUrl::new("redis+unix:///tmp/redis.sock");
    /// assert_eq!(url.to_string(), "redis+unix:///tmp/redis.sock");
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The address as written, password included: for the client only.
    ///
    /// ```
    /// assert_eq!(spillway::RemoteUrl::new("redis://h").expose(), "redis://h");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no address is set.
    ///
    /// ```
    /// assert!(spillway::RemoteUrl::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The address with its password (the part of the authority between
    /// the first `:` and the last `@`) replaced by `***`.
    fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// `scheme://user:password@host/...` with the password hidden; also hides a
/// `password=` or `pass=` query parameter (the unix-socket form). A list of
/// addresses (a cluster's seed nodes) has each one's hidden.
pub(crate) fn redact(text: &str) -> String {
    // Each address starts at a scheme; a password may contain commas.
    let bytes = text.as_bytes();
    let mut starts: Vec<usize> = SCHEMES
        .iter()
        .flat_map(|scheme| text.match_indices(scheme).map(|(i, _)| i))
        .filter(|i| *i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'+'))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let mut out = String::with_capacity(text.len());
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        out.push_str(&redact_one(&text[*start..end]));
    }
    out
}

/// The schemes an address may start with.
const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

fn redact_one(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let hidden = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => "***".to_string(),
            };
            out = format!(
                "{}{}{}",
                &out[..scheme_end + 3],
                hidden,
                &out[scheme_end + 3 + at..]
            );
        }
    }
    // The unix-socket form takes it as a query parameter.
    for param in ["password=", "pass="] {
        let mut from = 0;
        while let Some(found) = out[from..].find(param) {
            let at = from + found;
            let starts_param = at > 0 && matches!(out.as_bytes()[at - 1], b'?' | b'&');
            let end = out[at..].find('&').map_or(out.len(), |e| at + e);
            if starts_param {
                out.replace_range(at + param.len()..end, "***");
            }
            from = at + param.len();
        }
    }
    out
}

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RemoteUrl").field(&self.redacted()).finish()
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RemoteUrl {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RemoteUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(RemoteUrl)
    }
}

/// When entries are written to the shared tier.
///
/// ```
/// let config = spillway::Config::from_toml_str(
///     "[remote]\nurl = \"redis://127.0.0.1\"\nwrite_policy = \"on_insert\"").unwrap();
/// assert_eq!(config.remote.unwrap().write_policy, spillway::WritePolicy::OnInsert);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePolicy {
    /// When the memory tier evicts the entry (it is then also spilled to the
    /// local disk). Other processes find it once it has left this one's
    /// memory. Every insert still sends a small fence at once, so no other
    /// process keeps serving the version it replaced.
    #[default]
    OnSpill,
    /// On every insert (write-through): other processes find an entry as
    /// soon as the write has gone out.
    OnInsert,
}

/// The `[remote]` section: an optional shared tier on a Redis-protocol
/// server, below the local disk (memory → disk → remote → loader).
///
/// ```
/// let config = spillway::Config::from_toml_str(r#"
///     [remote]
///     url = "redis://127.0.0.1:6379"
///     namespace = "search-index"
///     timeout = "30ms"
///     ttl = "6h"
/// "#)?;
/// let remote = config.remote.unwrap();
/// assert_eq!(remote.namespace, "search-index");
/// assert_eq!(remote.timeout.0, std::time::Duration::from_millis(30));
/// # Ok::<(), spillway::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis+unix:///path/to/socket?pass=…`. Required. With `cluster`, the
    /// seed nodes of a Redis Cluster, separated by commas.
    pub url: RemoteUrl,
    /// For `rediss://`: a PEM file with the certificate authority that
    /// signed the server's certificate, when it is not in the system's
    /// trust store (default: none, the system's store).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The server is a Redis Cluster (default `false`): the client reads
    /// its topology from the nodes in `url` and follows slots and
    /// redirections itself.
    pub cluster: bool,
    /// Prefix of every key spillway writes on the server, so that several
    /// caches and applications can share one (default `spillway`). Caches
    /// that share entries use the same namespace.
    pub namespace: String,
    /// Bound on every remote call, connection included (default 50 ms): a
    /// read or invalidation that takes longer counts as failed.
    pub timeout: Millis,
    /// When entries are written to the server (default `on_spill`).
    pub write_policy: WritePolicy,
    /// Time to live of every key written on the server (default 1 day).
    pub ttl: Millis,
    /// Refuse to build when the server cannot be reached (default `false`:
    /// the cache builds with the remote tier off, warned and counted).
    pub required: bool,
    /// Bytes of records waiting to be sent (default 16 MiB). A record that
    /// finds it full is not sent, and counted.
    pub queue: ByteSize,
    /// How often the invalidation log is polled in case a notification was
    /// lost (default 1 s): the bound on how late another process's
    /// invalidation can reach this one's memory and disk.
    pub sync_interval: Millis,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            url: RemoteUrl::default(),
            tls_ca_file: None,
            cluster: false,
            namespace: "spillway".into(),
            timeout: Millis(std::time::Duration::from_millis(50)),
            write_policy: WritePolicy::OnSpill,
            ttl: Millis(std::time::Duration::from_secs(24 * 3600)),
            required: false,
            queue: ByteSize(16 << 20),
            sync_interval: Millis(std::time::Duration::from_secs(1)),
        }
    }
}

impl RemoteConfig {
    /// The section for `url`, every other setting at its default.
    ///
    /// ```
    /// let remote = spillway::RemoteConfig::new("redis://127.0.0.1:6379");
    /// assert_eq!(remote.namespace, "spillway");
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: RemoteUrl::new(url),
            ..Self::default()
        }
    }

    /// The addresses in `url`: one, or with `cluster` the comma-separated
    /// seed nodes (a comma inside a password must then be written `%2C`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn urls(&self) -> Vec<&str> {
        let url = self.url.expose().trim();
        if !self.cluster {
            return if url.is_empty() {
                Vec::new()
            } else {
                vec![url]
            };
        }
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Checks the section; errors name the field.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(crate::Error::Config {
                field: format!("remote.{field}"),
                value,
                reason: reason.into(),
            })
        };
        if !cfg!(feature = "redis") {
            return bad(
                "url",
                self.url.to_string(),
                "this build of spillway has no remote tier: enable the `redis` cargo feature",
            );
        }
        let urls = self.urls();
        if urls.is_empty() {
            return bad(
                "url",
                "<missing>".into(),
                "the server's address is required",
            );
        }
        for url in &urls {
            if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
                return bad(
                    "url",
                    self.url.to_string(),
                    "must start with redis://, rediss:// or redis+unix://",
                );
            }
        }
        if self.cluster && urls.iter().any(|u| u.contains("unix:")) {
            return bad(
                "url",
                self.url.to_string(),
                "a Redis Cluster is reached over TCP: redis:// or rediss:// addresses",
            );
        }
        if self.namespace.is_empty() || self.namespace.contains(['{', '}']) {
            return bad(
                "namespace",
                format!("{:?}", self.namespace),
                "must be non-empty, without braces (they are Redis Cluster hash tags)",
            );
        }
        if self.timeout.0.is_zero() {
            return bad("timeout", "0".into(), "must be more than 0");
        }
        if self.ttl.0 < std::time::Duration::from_secs(1) {
            return bad(
                "ttl",
                format!("{:?}", self.ttl.0),
                "must be at least 1s (Redis expiries are whole milliseconds; fences must outlive queued writes)",
            );
        }
        if self.sync_interval.0.is_zero() {
            return bad("sync_interval", "0".into(), "must be more than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_every_form() {
        for (url, shown) in [
            ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
            ("rediss://:pw@h", "rediss://:***@h"),
            ("redis://pw@h", "redis://***@h"),
            ("redis://h:6379", "redis://h:6379"),
            (
                "redis+unix:///s?db=1&password=pw",
                "redis+unix:///s?db=1&password=***",
            ),
            (
                "redis+unix:///s?pass=pw&db=1",
                "redis+unix:///s?pass=***&db=1",
            ),
            ("redis://u:p@ss@h/x", "redis://u:***@h/x"),
            (
                "redis://u:pw@a:1,redis://u:pw@b:2",
                "redis://u:***@a:1,redis://u:***@b:2",
            ),
        ] {
            let url = RemoteUrl::new(url);
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("pw"));
            assert_eq!(serde_json::to_string(&url).unwrap(), format!("\"{shown}\""));
        }
    }
}
