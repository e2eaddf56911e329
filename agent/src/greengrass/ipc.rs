//! One IPC connection to the nucleus: the Unix socket, the CONNECT handshake with the
//! component's auth token, and the request frames of the operations the agent uses.
//!
//! The connection is split in two halves so that one task can wait for frames while it writes
//! requests: [`Reader::next`] is cancel-safe (a partial frame stays in its buffer).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::rpc::{Decoder, Frame, FrameError, MessageType, CONNECTION_ACCEPTED, TERMINATE_STREAM};

/// Environment variable naming the nucleus's IPC socket (set by the nucleus for components).
pub const SOCKET_ENV: &str = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT";
/// Environment variable holding the component's IPC auth token (never logged).
pub const TOKEN_ENV: &str = "SVCUID";
/// How long the nucleus has to answer CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an IPC connection or operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// The socket cannot be reached or broke.
    #[error("nucleus IPC socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The nucleus closed the connection.
    #[error("the nucleus closed the IPC connection")]
    Closed,
    /// A frame could not be read or broke the protocol.
    #[error("IPC protocol: {0}")]
    Protocol(#[from] FrameError),
    /// The nucleus refused the connection (a wrong or expired auth token).
    #[error("the nucleus refused the IPC connection (is SVCUID this component's token?)")]
    Refused,
    /// No CONNECT_ACK in time.
    #[error("the nucleus did not answer the IPC CONNECT within {0:?}")]
    Timeout(Duration),
    /// The nucleus answered an operation with an error.
    #[error("{operation}: the nucleus answered {model}: {message}")]
    Operation {
        /// The operation, e.g. `aws.greengrass#PublishToIoTCore`.
        operation: &'static str,
        /// The error shape, e.g. `aws.greengrass#ServiceError`.
        model: String,
        /// The error's message, if any.
        message: String,
    },
    /// The nucleus ended the connection with a protocol or internal error.
    #[error("the nucleus ended the connection: {0}")]
    Ended(String),
}

/// Where the nucleus listens and the token to show it.
#[derive(Clone)]
pub struct Endpoint {
    /// The nucleus's Unix socket.
    pub socket: PathBuf,
    token: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("socket", &self.socket)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Endpoint {
    /// An endpoint at `socket` with auth token `token`.
    pub fn new(socket: PathBuf, token: String) -> Endpoint {
        Endpoint { socket, token }
    }

    /// The endpoint the nucleus gives its components, from [`SOCKET_ENV`] and [`TOKEN_ENV`];
    /// `None` unless both are set and non-empty (not running under a nucleus).
    pub fn from_env() -> Option<Endpoint> {
        let socket = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty())?;
        let token = std::env::var(TOKEN_ENV).ok().filter(|s| !s.is_empty())?;
        Some(Endpoint::new(PathBuf::from(socket), token))
    }

    fn io(&self, source: std::io::Error) -> IpcError {
        IpcError::Io {
            path: self.socket.display().to_string(),
            source,
        }
    }

    /// Connects and completes the CONNECT handshake.
    pub async fn connect(&self) -> Result<(Reader, Writer), IpcError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.io(e))?;
        let (read, write) = stream.into_split();
        let mut reader = Reader {
            half: read,
            decoder: Decoder::new(),
            path: self.socket.display().to_string(),
        };
        let mut writer = Writer {
            half: write,
            next_stream: 1,
            path: self.socket.display().to_string(),
        };
        let mut connect = Frame::new(MessageType::Connect, 0);
        connect.version = Some(super::rpc::VERSION.to_owned());
        connect.content_type = Some(super::rpc::JSON.to_owned());
        connect.payload = json!({ "authToken": self.token })
            .to_string()
            .into_bytes()
            .into();
        writer.write(&connect).await?;
        let ack = tokio::time::timeout(CONNECT_TIMEOUT, reader.next())
            .await
            .map_err(|_| IpcError::Timeout(CONNECT_TIMEOUT))??;
        if ack.message_type != MessageType::ConnectAck || !ack.has(CONNECTION_ACCEPTED) {
            return Err(IpcError::Refused);
        }
        Ok((reader, writer))
    }
}

/// The reading half.
#[derive(Debug)]
pub struct Reader {
    half: OwnedReadHalf,
    decoder: Decoder,
    path: String,
}

impl Reader {
    /// The next frame. Cancel-safe. The end of the connection, a protocol or internal error
    /// from the nucleus, or a frame that cannot be read is an error.
    pub async fn next(&mut self) -> Result<Frame, IpcError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return match frame.message_type {
                    MessageType::ProtocolError | MessageType::InternalError => Err(
                        IpcError::Ended(String::from_utf8_lossy(&frame.payload).into_owned()),
                    ),
                    _ => Ok(frame),
                };
            }
            let read = self
                .half
                .read_buf(self.decoder.buffer())
                .await
                .map_err(|source| IpcError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                return Err(IpcError::Closed);
            }
        }
    }
}

/// The writing half; numbers the streams it opens.
#[derive(Debug)]
pub struct Writer {
    half: OwnedWriteHalf,
    next_stream: i32,
    path: String,
}

impl Writer {
    /// Writes one frame.
    pub async fn write(&mut self, frame: &Frame) -> Result<(), IpcError> {
        let bytes = frame.encode()?;
        self.half
            .write_all(&bytes)
            .await
            .map_err(|source| IpcError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Opens a stream with a request of `operation` (JSON `request`); returns its stream id.
    pub async fn request(&mut self, operation: &str, request: &Value) -> Result<i32, IpcError> {
        let id = self.next_stream;
        // Stream ids are positive int32s; a connection never opens 2^31 streams in practice,
        // but wrap to 1 rather than overflow.
        self.next_stream = self.next_stream.checked_add(1).unwrap_or(1);
        let mut frame = Frame::new(MessageType::ApplicationMessage, id).json(
            &format!("{operation}Request"),
            request.to_string().into_bytes(),
        );
        frame.operation = Some(operation.to_owned());
        self.write(&frame).await?;
        Ok(id)
    }

    /// Answers a ping from the nucleus.
    pub async fn pong(&mut self, ping: &Frame) -> Result<(), IpcError> {
        let mut pong = Frame::new(MessageType::PingResponse, 0);
        pong.payload = ping.payload.clone();
        self.write(&pong).await
    }

    /// Closes the writing side (the nucleus sees the end of the connection).
    pub async fn close(&mut self) {
        let _ = self.half.shutdown().await;
    }
}

/// What a frame on an operation's stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The response or a stream event, with its model and JSON payload.
    Message {
        /// `service-model-type`.
        model: String,
        /// The payload (`null` when empty).
        payload: Value,
        /// Whether the stream ended with it.
        ended: bool,
    },
    /// The stream ended without a message.
    Ended,
}

/// Reads a frame of an operation's stream: an APPLICATION_MESSAGE is an [`Answer`], an
/// APPLICATION_ERROR is [`IpcError::Operation`].
pub fn answer(operation: &'static str, frame: &Frame) -> Result<Answer, IpcError> {
    let payload = if frame.payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&frame.payload)
            .map_err(|e| FrameError::new(format!("{operation}: payload not JSON: {e}")))?
    };
    let ended = frame.has(TERMINATE_STREAM);
    match (frame.message_type, &frame.model) {
        (MessageType::ApplicationError, model) => Err(IpcError::Operation {
            operation,
            model: model.clone().unwrap_or_default(),
            message: payload
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }),
        (MessageType::ApplicationMessage, Some(model)) => Ok(Answer::Message {
            model: model.clone(),
            payload,
            ended,
        }),
        (MessageType::ApplicationMessage, None) if ended => Ok(Answer::Ended),
        (other, _) => Err(IpcError::Protocol(FrameError::new(format!(
            "{operation}: unexpected {other:?} on stream {}",
            frame.stream_id
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A one-connection server at a fresh socket that reads one frame and answers `reply`.
    async fn server(reply: Vec<u8>) -> (tempfile::TempDir, Endpoint) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ipc.socket");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut decoder = Decoder::new();
            while decoder.next_frame().unwrap().is_none() {
                if stream.read_buf(decoder.buffer()).await.unwrap() == 0 {
                    return;
                }
            }
            stream.write_all(&reply).await.unwrap();
            // Keep the connection open until the client is done.
            let _ = stream.read_buf(decoder.buffer()).await;
        });
        (dir, Endpoint::new(socket, "s3cr3t-svcuid".to_owned()))
    }

    #[tokio::test]
    async fn a_malformed_or_refusing_answer_is_an_error_not_a_panic() {
        let (_dir, endpoint) = server(vec![0xff; 40]).await;
        assert!(matches!(
            endpoint.connect().await,
            Err(IpcError::Protocol(_))
        ));

        let refused = Frame::new(MessageType::ConnectAck, 0).encode().unwrap();
        let (_dir, endpoint) = server(refused).await;
        assert!(matches!(endpoint.connect().await, Err(IpcError::Refused)));

        let (_dir, endpoint) = server(Vec::new()).await;
        drop(_dir);
        assert!(matches!(endpoint.connect().await, Err(IpcError::Io { .. })));
    }

    #[tokio::test]
    async fn connect_succeeds_on_the_accepted_flag_and_debug_never_shows_the_token() {
        let accepted = Frame::new(MessageType::ConnectAck, 0)
            .flags(CONNECTION_ACCEPTED)
            .encode()
            .unwrap();
        let (_dir, endpoint) = server(accepted).await;
        assert!(endpoint.connect().await.is_ok());
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn an_error_answer_names_the_operation_shape_and_message() {
        let frame = Frame::new(MessageType::ApplicationError, 3)
            .json(
                "aws.greengrass#ServiceError",
                &b"{\"message\":\"full\"}"[..],
            )
            .flags(TERMINATE_STREAM);
        let error = answer("aws.greengrass#PublishToIoTCore", &frame).unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws.greengrass#PublishToIoTCore: the nucleus answered aws.greengrass#ServiceError: full"
        );
        let garbage = Frame::new(MessageType::ApplicationMessage, 3).json("x", &b"{"[..]);
        assert!(answer("op", &garbage).is_err());
    }
}
