//! The event-stream RPC layer of Greengrass IPC: which headers a frame carries and what they
//! mean. The frame format itself (prelude, headers, CRCs) is `aws-smithy-eventstream`'s.
//!
//! Every frame carries `:message-type`, `:message-flags` and `:stream-id` (int32). Stream 0 is
//! the connection's (CONNECT, CONNECT_ACK, PING); a client opens stream `n > 0` with an
//! APPLICATION_MESSAGE that also names the `operation`; every payload is JSON, described by
//! `:content-type` and `service-model-type`. The answer on the same stream is an
//! APPLICATION_MESSAGE (the response, then for streaming operations events) or an
//! APPLICATION_ERROR; TERMINATE_STREAM ends the stream.
//!
//! Public so that the test harness's stand-in nucleus speaks the same frames; it is checked
//! against AWS's own client, which shares none of this code.

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::{Buf, Bytes, BytesMut};

/// The protocol version sent in CONNECT (`:version`).
pub const VERSION: &str = "0.1.0";
/// The only content type used.
pub const JSON: &str = "application/json";
/// Flag of CONNECT_ACK: the connection is accepted.
pub const CONNECTION_ACCEPTED: i32 = 1;
/// Flag: this frame ends its stream.
pub const TERMINATE_STREAM: i32 = 2;
/// Largest frame accepted: a maximal journal message, base64 in JSON, with room to spare.
pub const MAX_FRAME: usize = 1024 * 1024;

/// `:message-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A request, response or stream event.
    ApplicationMessage,
    /// An error response (modelled error shape).
    ApplicationError,
    /// Ping.
    Ping,
    /// Answer to a ping.
    PingResponse,
    /// Opens the connection (stream 0).
    Connect,
    /// Answer to CONNECT.
    ConnectAck,
    /// The peer broke the protocol; the connection ends.
    ProtocolError,
    /// The peer failed; the connection ends.
    InternalError,
}

impl MessageType {
    fn code(self) -> i32 {
        match self {
            MessageType::ApplicationMessage => 0,
            MessageType::ApplicationError => 1,
            MessageType::Ping => 2,
            MessageType::PingResponse => 3,
            MessageType::Connect => 4,
            MessageType::ConnectAck => 5,
            MessageType::ProtocolError => 6,
            MessageType::InternalError => 7,
        }
    }

    fn from_code(code: i32) -> Option<MessageType> {
        Some(match code {
            0 => MessageType::ApplicationMessage,
            1 => MessageType::ApplicationError,
            2 => MessageType::Ping,
            3 => MessageType::PingResponse,
            4 => MessageType::Connect,
            5 => MessageType::ConnectAck,
            6 => MessageType::ProtocolError,
            7 => MessageType::InternalError,
            _ => return None,
        })
    }
}

/// A protocol violation or a frame that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(String);

impl FrameError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> FrameError {
        FrameError(message.into())
    }
}

/// One RPC frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `:message-type`.
    pub message_type: MessageType,
    /// `:message-flags`.
    pub flags: i32,
    /// `:stream-id` (0: the connection).
    pub stream_id: i32,
    /// `operation`, on the first frame of a stream, e.g. `aws.greengrass#PublishToIoTCore`.
    pub operation: Option<String>,
    /// `service-model-type`, e.g. `aws.greengrass#PublishToIoTCoreRequest`.
    pub model: Option<String>,
    /// `:content-type`.
    pub content_type: Option<String>,
    /// `:version` (CONNECT).
    pub version: Option<String>,
    /// The payload (JSON, or empty).
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `message_type` on `stream_id` with no other header and no payload.
    pub fn new(message_type: MessageType, stream_id: i32) -> Frame {
        Frame {
            message_type,
            flags: 0,
            stream_id,
            operation: None,
            model: None,
            content_type: None,
            version: None,
            payload: Bytes::new(),
        }
    }

    /// With a JSON payload of model `model`.
    pub fn json(mut self, model: &str, payload: impl Into<Bytes>) -> Frame {
        self.model = Some(model.to_owned());
        self.content_type = Some(JSON.to_owned());
        self.payload = payload.into();
        self
    }

    /// With `flags`.
    pub fn flags(mut self, flags: i32) -> Frame {
        self.flags = flags;
        self
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: i32) -> bool {
        self.flags & flag != 0
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let int = |name: &'static str, v: i32| Header::new(name, HeaderValue::Int32(v));
        let string = |name: &'static str, v: &str| {
            Header::new(name, HeaderValue::String(v.to_owned().into()))
        };
        let mut headers = vec![
            int(":message-type", self.message_type.code()),
            int(":message-flags", self.flags),
            int(":stream-id", self.stream_id),
        ];
        let optional = [
            (":version", &self.version),
            ("operation", &self.operation),
            (":content-type", &self.content_type),
            ("service-model-type", &self.model),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                headers.push(string(name, value));
            }
        }
        let message = Message::new_from_parts(headers, self.payload.clone());
        let mut out = Vec::new();
        write_message_to(&message, &mut out).map_err(|e| FrameError::new(e.to_string()))?;
        Ok(out)
    }

    /// Reads the RPC headers of an event-stream message. A missing or mistyped required header
    /// is an error; unknown headers are ignored.
    pub fn from_message(message: &Message) -> Result<Frame, FrameError> {
        let find = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str().eq_ignore_ascii_case(name))
                .map(Header::value)
        };
        let int = |name: &str| match find(name) {
            Some(HeaderValue::Int32(v)) => Ok(*v),
            Some(other) => Err(FrameError::new(format!(
                "{name} is not an int32: {other:?}"
            ))),
            None => Err(FrameError::new(format!("no {name} header"))),
        };
        let string = |name: &str| match find(name) {
            Some(HeaderValue::String(v)) => Ok(Some(v.as_str().to_owned())),
            Some(other) => Err(FrameError::new(format!(
                "{name} is not a string: {other:?}"
            ))),
            None => Ok(None),
        };
        let code = int(":message-type")?;
        Ok(Frame {
            message_type: MessageType::from_code(code)
                .ok_or_else(|| FrameError::new(format!("unknown :message-type {code}")))?,
            flags: int(":message-flags")?,
            stream_id: int(":stream-id")?,
            operation: string("operation")?,
            model: string("service-model-type")?,
            content_type: string(":content-type")?,
            version: string(":version")?,
            payload: message.payload().clone(),
        })
    }

    /// Decodes one whole frame from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let message = read_message_from(bytes).map_err(|e| FrameError::new(e.to_string()))?;
        Frame::from_message(&message)
    }
}

/// Smallest frame: the prelude (total length, headers length, prelude CRC) and the message CRC.
const MIN_FRAME: usize = 16;

/// Splits a byte stream into frames: the total length that starts each frame says where it
/// ends; `aws-smithy-eventstream` reads the frame and checks both CRCs.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: BytesMut,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The buffer to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// The next whole frame in the buffer, if there is one. A damaged frame, a frame that
    /// breaks the protocol or one over [`MAX_FRAME`] is an error: the stream cannot be
    /// resynchronised after it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let total = (&self.buffer[..4]).get_u32() as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&total) {
            return Err(FrameError::new(format!(
                "a frame of {total} bytes (from {MIN_FRAME} to {MAX_FRAME} are accepted)"
            )));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let bytes = self.buffer.split_to(total).freeze();
        Frame::decode(&bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_survives_encode_and_decode_whole_and_byte_by_byte() {
        let mut frame = Frame::new(MessageType::ApplicationMessage, 7)
            .json(
                "aws.greengrass#PublishToIoTCoreRequest",
                &b"{\"qos\":\"1\"}"[..],
            )
            .flags(TERMINATE_STREAM);
        frame.operation = Some("aws.greengrass#PublishToIoTCore".to_owned());
        let bytes = frame.encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);

        let mut decoder = Decoder::new();
        let mut got = Vec::new();
        for byte in bytes.iter().chain(bytes.iter()) {
            decoder.buffer().extend_from_slice(&[*byte]);
            if let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![frame.clone(), frame]);
    }

    #[test]
    fn damaged_oversized_and_headerless_frames_are_errors_not_panics() {
        let frame = Frame::new(MessageType::Ping, 0).encode().unwrap();
        let mut damaged = frame.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        assert!(Frame::decode(&damaged).is_err());
        let mut decoder = Decoder::new();
        decoder.buffer().extend_from_slice(&damaged);
        assert!(decoder.next_frame().is_err());

        let mut decoder = Decoder::new();
        decoder.buffer().extend_from_slice(&u32::MAX.to_be_bytes());
        decoder.buffer().extend_from_slice(&[0; 12]);
        assert!(decoder.next_frame().is_err());

        let bare = Message::new_from_parts(Vec::new(), Bytes::new());
        assert!(Frame::from_message(&bare).is_err());
        let mut out = Vec::new();
        write_message_to(&bare, &mut out).unwrap();
        assert!(Frame::decode(&out).is_err());
        assert!(Frame::decode(&out[..5]).is_err());
    }
}
