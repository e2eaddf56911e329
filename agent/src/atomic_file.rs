//! Small state files replaced whole (alarms, the remote config document): written to
//! `<file>.tmp`, flushed, renamed over the file and the directory flushed, so a power cut leaves
//! either the old or the new content, never half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, creating its directory if needed. With `owner_only` the file
/// is created with mode 0600 (on Unix), for content that only the agent should read.
pub(crate) fn replace(path: &Path, bytes: &[u8], owner_only: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from a crash keeps its mode when truncated; start from a new file.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if owner_only {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = owner_only;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(dir.unwrap_or(Path::new("."))) {
        // Makes the rename durable; a failure here leaves a correct file that may revert to
        // the old one after a power cut, which the callers tolerate.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_owner_only_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/doc.json");
        replace(&path, b"one", true).unwrap();
        replace(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("state/doc.json.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
