//! Secrets read from files or the environment: the API token, the TLS private key, the MQTT
//! password.
//!
//! ```text
//!  $ENV (if set) ─ else ─ --xxx-file PATH ─► Secret ─► used once (never logged)
//!                          (refused if other users can read it)
//! ```
//!
//! The rules are the agent's (`agent/src/credentials.rs`), kept as a small parallel module
//! rather than shared through `osprey-protocol`, which does no I/O: the file holds the secret
//! alone (one trailing newline is ignored), and a file other users can read is refused with a
//! message that says `chmod 600`. The cloud is stricter than the agent for its own secrets: it
//! also refuses group-readable files (the API token and the TLS key guard the whole fleet
//! view), but keeps the agent's rule (only world-readable refused) for the MQTT password, so an
//! operator can share one password file with one group for both. [`Secret`] prints as `***`
//! in `Debug`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from its text (e.g. an environment variable's value).
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which readers other than the owner a secret file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileRule {
    /// Owner only: refused if the group or others can read it (API token, TLS key).
    OwnerOnly,
    /// Owner and group: refused only if everyone can read it (MQTT password, as the agent).
    OwnerAndGroup,
}

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        /// What the file holds ("API token", "TLS key", "MQTT password").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the read reported.
        source: std::io::Error,
    },
    /// Other users can read the file.
    #[error(
        "the {what} file {path} can be read by other users (mode {mode:o}): restrict it, \
         e.g. `chmod 600 {path}`"
    )]
    TooOpen {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is empty or not UTF-8.
    #[error("the {what} file {path} is empty or not UTF-8 text")]
    Unusable {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// Checks that only the owner (and, by `rule`, the group) can read `path`. Blocking.
pub fn check_mode(path: &Path, what: &'static str, rule: FileRule) -> Result<(), SecretError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| SecretError::Read {
            what,
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    let forbidden = match rule {
        FileRule::OwnerOnly => 0o044,
        FileRule::OwnerAndGroup => 0o004,
    };
    if mode & forbidden != 0 {
        return Err(SecretError::TooOpen {
            what,
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The secret in `path` (without one trailing newline), after [`check_mode`]. Blocking (one
/// small read); call it once at start.
pub fn read_file(path: &Path, what: &'static str, rule: FileRule) -> Result<Secret, SecretError> {
    check_mode(path, what, rule)?;
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let unusable = || SecretError::Unusable {
        what,
        path: path.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| unusable())?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(unusable());
    }
    Ok(Secret(secret.to_owned()))
}

/// The secret from `env` (the environment variable's value, when set and not empty) or else
/// from `file`; `None` when neither is given.
pub fn load(
    env: Option<String>,
    file: Option<&Path>,
    what: &'static str,
    rule: FileRule,
) -> Result<Option<Secret>, SecretError> {
    match (env.filter(|v| !v.is_empty()), file) {
        (Some(value), _) => Ok(Some(Secret(value))),
        (None, Some(path)) => read_file(path, what, rule).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_secret_comes_without_its_newline_and_never_shows_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "s3cret-s3cret-s3cret\r\n", 0o600);
        let s = read_file(&path, "API token", FileRule::OwnerOnly).unwrap();
        assert_eq!(s.expose(), "s3cret-s3cret-s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        let env = load(
            Some("from-env".into()),
            Some(&path),
            "x",
            FileRule::OwnerOnly,
        );
        assert_eq!(env.unwrap().unwrap().expose(), "from-env");
        assert_eq!(load(None, None, "x", FileRule::OwnerOnly).unwrap(), None);
    }

    #[test]
    fn files_others_can_read_are_refused_by_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "s3cret", 0o640);
        let err = read_file(&path, "API token", FileRule::OwnerOnly).unwrap_err();
        assert!(
            matches!(err, SecretError::TooOpen { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("s3cret"));
        assert!(read_file(&path, "MQTT password", FileRule::OwnerAndGroup).is_ok());
        let path = file(dir.path(), "s3cret", 0o604);
        assert!(read_file(&path, "MQTT password", FileRule::OwnerAndGroup).is_err());
    }

    #[test]
    fn empty_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "\n", 0o600);
        assert!(matches!(
            read_file(&path, "x", FileRule::OwnerOnly),
            Err(SecretError::Unusable { .. })
        ));
        assert!(matches!(
            read_file(&dir.path().join("missing"), "x", FileRule::OwnerOnly),
            Err(SecretError::Read { .. })
        ));
    }
}
