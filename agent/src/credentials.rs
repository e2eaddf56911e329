//! MQTT user name and password: where the password comes from, how it is checked, and how it
//! is kept out of logs.
//!
//! ```text
//!  [mqtt] username ─────────────────────────────────────────────┐
//!  $OSPREY_MQTT_PASSWORD (if set) ─ else ─ [mqtt] password_file ─┴─► Credentials ─► CONNECT
//!                                          (read once at start; refused if others can read it)
//! ```
//!
//! The password file holds the password alone (one trailing newline is ignored). It must not
//! be readable by everyone (mode `o+r`): the agent refuses to start rather than use a secret
//! every local user can read. [`Password`] prints as `***` in `Debug`, so a logged config or
//! error never shows it. Over plain MQTT the password crosses the network in clear, so the
//! agent warns at start when TLS is off and the broker is not on this host
//! ([`is_plaintext_to_remote`]).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::Mqtt;

/// The environment variable that, when set, gives the password (instead of `password_file`).
pub const PASSWORD_ENV: &str = "OSPREY_MQTT_PASSWORD";

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The secret itself, for the CONNECT packet.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What the agent logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The MQTT user name.
    pub username: String,
    /// The password (empty when none is configured).
    pub password: Password,
}

/// Why the credentials cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The password file cannot be read.
    #[error("cannot read the MQTT password file {path} (mqtt.password_file)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        source: std::io::Error,
    },
    /// The password file can be read by every user of the machine.
    #[error(
        "the MQTT password file {path} is readable by everyone (mode {mode:o}): restrict it, \
         e.g. `chmod 600 {path}` (or 640 with a group of the agent's user)"
    )]
    WorldReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password file is empty or not UTF-8.
    #[error("the MQTT password file {path} is empty or not UTF-8 text")]
    Unusable {
        /// The file.
        path: PathBuf,
    },
    /// A password is given but no user name.
    #[error(
        "an MQTT password is given (mqtt.password_file or ${PASSWORD_ENV}) but no mqtt.username"
    )]
    PasswordWithoutUser,
}

/// The credentials of `mqtt`: none without a user name; the password from `env_password`
/// (the value of [`PASSWORD_ENV`], if set) or else from `mqtt.password_file`. Blocking (one
/// small file read); call it once at start.
pub fn load(
    mqtt: &Mqtt,
    env_password: Option<String>,
) -> Result<Option<Credentials>, CredentialsError> {
    let password = match (env_password, &mqtt.password_file) {
        (Some(password), _) => Some(Password(password)),
        (None, Some(path)) => Some(read_password_file(path)?),
        (None, None) => None,
    };
    match (&mqtt.username, password) {
        (Some(username), password) => Ok(Some(Credentials {
            username: username.clone(),
            password: password.unwrap_or_else(|| Password(String::new())),
        })),
        (None, Some(_)) => Err(CredentialsError::PasswordWithoutUser),
        (None, None) => Ok(None),
    }
}

fn read_password_file(path: &Path) -> Result<Password, CredentialsError> {
    let read = |source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(CredentialsError::WorldReadable {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let unusable = || CredentialsError::Unusable {
        path: path.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| unusable())?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(unusable());
    }
    Ok(Password(password.to_owned()))
}

/// Whether `mqtt` sends in clear to another machine: TLS off and a host that is not a
/// loopback name or address.
pub fn is_plaintext_to_remote(mqtt: &Mqtt) -> bool {
    if mqtt.tls.is_some() {
        return false;
    }
    let host = mqtt.host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sim::Scenario;

    fn mqtt(host: &str) -> Mqtt {
        Config::simulated("gw", 1, Scenario::Steady, "/tmp/j", host, 1883)
            .unwrap()
            .mqtt
    }

    fn file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("password");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_password_comes_from_the_file_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = mqtt("127.0.0.1");
        m.username = Some("gw".to_owned());
        m.password_file = Some(file(dir.path(), "s3cret\n", 0o600));
        let c = load(&m, None).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("gw", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        // The environment wins over the file.
        let c = load(&m, Some("from-env".to_owned())).unwrap().unwrap();
        assert_eq!(c.password.expose(), "from-env");
    }

    #[test]
    fn a_world_readable_password_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = mqtt("127.0.0.1");
        m.username = Some("gw".to_owned());
        m.password_file = Some(file(dir.path(), "s3cret", 0o644));
        let err = load(&m, None).unwrap_err();
        assert!(
            matches!(err, CredentialsError::WorldReadable { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("s3cret"));
        m.password_file = Some(file(dir.path(), "s3cret", 0o640));
        assert!(load(&m, None).is_ok());
    }

    #[test]
    fn bad_files_and_a_password_without_user_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = mqtt("127.0.0.1");
        m.password_file = Some(file(dir.path(), "s3cret", 0o600));
        assert!(matches!(
            load(&m, None),
            Err(CredentialsError::PasswordWithoutUser)
        ));
        m.username = Some("gw".to_owned());
        m.password_file = Some(file(dir.path(), "\n", 0o600));
        assert!(matches!(
            load(&m, None),
            Err(CredentialsError::Unusable { .. })
        ));
        m.password_file = Some(dir.path().join("missing"));
        assert!(matches!(load(&m, None), Err(CredentialsError::Read { .. })));
        m.password_file = None;
        assert_eq!(load(&m, None).unwrap().unwrap().password.expose(), "");
        m.username = None;
        assert_eq!(load(&m, None).unwrap(), None);
    }

    #[test]
    fn plain_mqtt_to_another_host_is_flagged() {
        assert!(!is_plaintext_to_remote(&mqtt("127.0.0.1")));
        assert!(!is_plaintext_to_remote(&mqtt("localhost")));
        assert!(!is_plaintext_to_remote(&mqtt("::1")));
        assert!(is_plaintext_to_remote(&mqtt("broker.example.com")));
        assert!(is_plaintext_to_remote(&mqtt("10.0.0.5")));
        let mut tls = mqtt("broker.example.com");
        tls.tls = Some(crate::tls::Tls::new(PathBuf::from("/etc/osprey/ca.pem")));
        assert!(!is_plaintext_to_remote(&tls));
    }
}
