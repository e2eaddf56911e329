//! The error a run of the agent can end with.

use crate::config::ConfigError;
use crate::journal::JournalError;
use crate::tls::TlsError;

/// Why [`crate::run`] stopped with a failure. Connection problems are not among them: the
/// uplink logs them and reconnects.
///
/// Like every error of this crate, its message describes only its own level; the cause is
/// `source()`. Print the whole chain (`{:#}` with anyhow, or walk `source()`) in logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The TLS certificate or key files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The MQTT user name or password cannot be used.
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    /// The journal cannot be opened, written or read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A status message could not be encoded (a bug).
    #[error("cannot encode a status message")]
    Encode(#[from] osprey_protocol::EncodeError),
    /// A pipeline task panicked or was cancelled: a bug.
    #[error("the {task} task stopped unexpectedly: {detail}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened to it.
        detail: String,
    },
}

impl AgentError {
    /// Wraps a failed join of `task`.
    pub(crate) fn join(task: &'static str, err: tokio::task::JoinError) -> AgentError {
        AgentError::Task {
            task,
            detail: err.to_string(),
        }
    }
}
