//! Files only their owner reads: cached entries can be private data.
//!
//! The cache directory is created `0700` and every file spillway creates in
//! it `0600`. An existing directory that another user owns, or that others
//! can write to, is refused (anyone who can write there can plant files the
//! cache would trust or follow). spillway's own files are opened without
//! following symlinks, so a link planted in place of the lock, the format
//! file or a journal file is refused instead of redirecting a write.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Creates `dir` (and missing parents) private to the owner, then checks
/// that an existing one is safe to use.
///
/// ```ignore
/// private_fs::create_dir(Path::new("/var/cache/myapp"))?;
/// ```
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    let bad = |reason: String| Error::Config {
        field: "disk.dir".into(),
        value: dir.display().to_string(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(bad("it is a file, not a directory".into()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(format!("cannot create the cache directory: {e}")))?;
    check_dir(dir)?;
    // Found out here, with the setting's name, rather than as an I/O error
    // on whichever file happens to be written first. A real write, because
    // permission bits do not stop root while a read-only mount does.
    let probe = dir.join(".spillway-write-probe");
    create(&probe)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"ok"))
        .map_err(|e| bad(format!("cannot write to the cache directory: {e}")))?;
    match std::fs::remove_file(&probe) {
        // Another open of this directory probed it at the same moment and
        // removed the file first: the write succeeded all the same.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| Error::io("remove write probe in", dir, e)),
    }
}

/// Refuses a directory owned by another user or writable by others.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("inspect cache directory", dir, e))?;
    let unsafe_dir = |reason: String| Error::UnsafeDir {
        dir: dir.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this process's uid {me}",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "others can write to it (mode {:o}); make it private with chmod 700",
            mode & 0o777
        )));
    }
    Ok(())
}

/// Options for one of spillway's files: `0600` when created, never through
/// a symlink.
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options
}

/// Creates (or truncates) a private file, refusing a symlink in its place.
pub(crate) fn create(path: &Path) -> std::io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Refuses a symlink at `path` (for files another library opens itself).
pub(crate) fn refuse_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::UnsafeDir {
            dir: path.to_path_buf(),
            reason: "a symlink stands where the cache keeps its own file".into(),
        }),
        _ => Ok(()),
    }
}

/// Makes an existing file private to the owner (for files another library
/// created with the default mode).
pub(crate) fn make_private(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("make private", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_place_of_a_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(create(&link).is_err());
        assert!(options().write(true).open(&link).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(refuse_symlink(&link).is_err());
    }

    #[test]
    fn created_files_and_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = sub.join("f");
        drop(create(&file).unwrap());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
