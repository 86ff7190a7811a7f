//! The crate's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in spillway, with the context needed to act on it.
///
/// Cache *misses* are never errors: a record that cannot be decoded, a disk
/// read that fails or an entry that is too large are counted in
/// [`crate::StatsSnapshot`] and reported as misses. Errors come from building
/// and closing a cache, from configuration, from codec registration, and from
/// loaders passed to [`crate::CacheBackend::get_or_insert`].
///
/// ```
/// let err = spillway::Config::from_toml_str("[memory]\ncapacity = \"lots\"").unwrap_err();
/// assert!(err.to_string().contains("memory.capacity"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, malformed or out of range.
    #[error("invalid config field `{field}` = {value}: {reason}")]
    Config {
        /// Dotted path of the offending field, e.g. `memory.capacity`.
        field: String,
        /// The value as written (or `<missing>`).
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A configuration file is not valid TOML.
    ///
    /// ```
    /// let err = spillway::Config::from_toml_str("[memory]\ncapacity = \"64 MiB\n").unwrap_err();
    /// assert!(err.to_string().starts_with("<string>:2:19: not valid TOML"), "{err}");
    /// ```
    #[error("{}:{line}:{column}: not valid TOML: {message}", file.as_ref().map_or_else(|| "<string>".to_string(), |f| f.display().to_string()))]
    ConfigSyntax {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser expected.
        message: String,
    },
    /// A file-system operation on the cache directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `create cache directory`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The foyer disk tier refused an operation.
    #[error("disk tier at {}: {op}: {message}", dir.display())]
    Disk {
        /// The cache directory.
        dir: PathBuf,
        /// What was being done.
        op: &'static str,
        /// foyer's description of the failure.
        message: String,
    },
    /// The remote tier's server refused or did not answer (building with
    /// `remote.required`, or a malformed address). The address shown has
    /// its password hidden.
    #[error("remote tier at {url}: {op}: {message}")]
    Remote {
        /// The server's address, password hidden.
        url: String,
        /// What was being done.
        op: &'static str,
        /// The client's description of the failure.
        message: String,
    },
    /// Another process (or another cache in this process) owns the directory.
    #[error("cache directory {} is in use by {}", dir.display(), holder.map_or_else(|| "another cache".to_string(), |pid| format!("process {pid}")))]
    Locked {
        /// The cache directory.
        dir: PathBuf,
        /// The owner's process id, when it could be read.
        holder: Option<u32>,
    },
    /// The directory holds data in another on-disk format, or written with
    /// settings that cannot change under it (such as the block size).
    #[error("cache directory {} is incompatible: it holds {found}, this cache needs {expected} (set disk.reset_incompatible to wipe it)", dir.display())]
    IncompatibleDir {
        /// The cache directory.
        dir: PathBuf,
        /// What the directory records.
        found: String,
        /// What this cache was configured with.
        expected: String,
    },
    /// `spillway inspect` found no spillway cache directory there.
    #[error("{} is not a spillway cache directory: {reason}", dir.display())]
    NotACacheDir {
        /// The directory inspected.
        dir: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A cache directory (or a file in it) that is not safe to use: owned
    /// by another user, writable by others, or a planted symlink.
    #[error("refusing disk.dir path {}: {reason}", dir.display())]
    UnsafeDir {
        /// The directory or file.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A `type_name` was registered twice in one [`crate::CodecRegistry`].
    #[error("a codec for type name `{type_name}` is already registered")]
    DuplicateCodec {
        /// The type name registered twice.
        type_name: String,
    },
    /// A codec could not encode a value.
    #[error("cannot encode `{type_name}` for key {key}: {reason}")]
    Encode {
        /// The cache key, as `prefix/key`.
        key: String,
        /// The entry's type name.
        type_name: String,
        /// Why encoding failed.
        reason: String,
    },
    /// A codec could not decode a value.
    #[error("cannot decode `{type_name}`: {reason}")]
    Decode {
        /// The entry's type name.
        type_name: String,
        /// Why decoding failed.
        reason: String,
    },
    /// The loader of a `get_or_insert` failed. Every caller waiting on that
    /// load receives this same error; the loader's own error is its `source`.
    #[error("loader for key {key} failed: {source}")]
    Loader {
        /// The cache key, as `prefix/key`.
        key: String,
        /// The leader's error.
        #[source]
        source: Arc<Error>,
    },
    /// The cache was closed and can no longer be used for this operation.
    #[error("the cache has been closed")]
    Closed,
    /// An error raised by application code (typically a loader).
    #[error(transparent)]
    External(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps any application error, typically inside a loader.
    ///
    /// ```
    /// let err = spillway::Error::external(std::io::Error::other("backend down"));
    /// assert_eq!(err.to_string(), "backend down");
    /// ```
    pub fn external(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::External(Box::new(error))
    }

    /// An [`Error::Io`] naming what was done to which path.
    ///
    /// ```
    /// let e = spillway::Error::io("open", "/x", std::io::Error::other("denied"));
    /// assert_eq!(e.to_string(), "open /x: denied");
    /// ```
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with spillway's [`Error`].
///
/// ```
/// fn budget() -> spillway::Result<u64> {
///     Ok(spillway::Config::from_toml_str("")?.memory.capacity.0)
/// }
/// assert!(budget().unwrap() > 0);
/// ```
pub type Result<T> = std::result::Result<T, Error>;
