//! Transport framing (RFC 3261 §18): how bytes from the driver become messages. A UDP datagram
//! carries one message whose body is sized by Content-Length (a larger value is an error, a
//! smaller one truncates, no value means "the rest of the datagram"); a TCP stream carries
//! messages back to back, each body sized by Content-Length, with CRLF keep-alives in between.
//! Also the types the driver sees for where bytes go: [`Transport`], [`ConnectionId`],
//! [`Transmit`].

use std::net::SocketAddr;

use crate::message::{self, Head, ParseError, MAX_BODY, MAX_HEAD};

/// A TCP connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// How a message arrived, and so how its answers leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP, from/to the endpoint's socket.
    Udp,
    /// A TCP connection owned by the driver.
    Tcp(ConnectionId),
}

impl Transport {
    /// Whether the transport is reliable (RFC 3261 §17: no retransmission timers).
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::Tcp(_))
    }

    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp(_) => "TCP",
        }
    }
}

/// Bytes for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// UDP, or the TCP connection to write to.
    pub transport: Transport,
    /// The peer (for UDP the datagram destination; for TCP the connection's peer).
    pub destination: SocketAddr,
    /// One complete SIP message.
    pub bytes: Vec<u8>,
}

/// A message head could not be framed. When `head` is present the request can still be answered
/// (with `status`); on a stream the connection cannot be resynchronised and must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError {
    /// What is wrong.
    pub error: ParseError,
    /// The lexed head, when there was one.
    pub head: Option<Box<Head>>,
    /// The status code that answers this error (400, or 513 for oversized messages).
    pub status: u16,
}

impl FramingError {
    fn new(error: ParseError, head: Option<Head>) -> Self {
        let status = if error == ParseError::TooLarge {
            513
        } else {
            400
        };
        Self {
            error,
            head: head.map(Box::new),
            status,
        }
    }
}

/// Frames one UDP datagram: `Ok(None)` for a keep-alive (only CR/LF), otherwise the head and
/// the body. Bytes after Content-Length are ignored (RFC 3261 §18.3); a datagram without the
/// empty line is taken as a head without body.
pub fn frame_datagram(data: &[u8]) -> Result<Option<(Head, Vec<u8>)>, FramingError> {
    let data = data
        .get(message::leading_line_breaks(data)..)
        .unwrap_or(&[]);
    if data.is_empty() {
        return Ok(None);
    }
    let (head_bytes, rest) = match message::find_head_end(data) {
        Some((head_len, body_start)) => (
            data.get(..head_len).unwrap_or(data),
            data.get(body_start..).unwrap_or(&[]),
        ),
        None => (data, &[][..]),
    };
    let head = message::parse_head(head_bytes).map_err(|e| FramingError::new(e, None))?;
    let body = match message::content_length(&head.headers) {
        Err(error) => return Err(FramingError::new(error, Some(head))),
        Ok(None) => rest,
        Ok(Some(declared)) => match rest.get(..declared) {
            Some(body) => body,
            None => {
                let error = ParseError::BodyTruncated {
                    declared,
                    received: rest.len(),
                };
                return Err(FramingError::new(error, Some(head)));
            }
        },
    };
    Ok(Some((head, body.to_vec())))
}

/// One item taken out of a TCP byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A complete message.
    Message(Head, Vec<u8>),
    /// The stream cannot be framed any further: answer if possible, then close.
    Error(FramingError),
}

/// Reassembles messages from a TCP byte stream delivered in arbitrary chunks. Work is
/// incremental: the search for the end of a head resumes where it stopped, and a head is parsed
/// once while its body trickles in.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// How far the search for the empty line has got without finding it.
    searched: usize,
    /// A parsed head waiting for its body: the head, where the body starts and ends.
    pending: Option<(Head, usize, usize)>,
    failed: bool,
}

impl StreamFramer {
    /// A framer with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes (ignored once the stream has failed).
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Whether a framing error was reported (the connection must be closed).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Whether part of a message is buffered (bytes received that do not yet make a whole
    /// message), once [`StreamFramer::next_item`] has returned `None`.
    pub fn is_mid_message(&self) -> bool {
        !self.failed && (self.pending.is_some() || !self.buf.is_empty())
    }

    /// The next complete message, a framing error, or `None` when more bytes are needed.
    pub fn next_item(&mut self) -> Option<StreamItem> {
        if self.failed {
            return None;
        }
        if self.pending.is_none() {
            let skip = message::leading_line_breaks(&self.buf);
            self.buf.drain(..skip);
            self.searched = self.searched.saturating_sub(skip);
            if self.buf.is_empty() {
                return None;
            }
            let from = self.searched.saturating_sub(3);
            let found = self
                .buf
                .get(from..)
                .and_then(message::find_head_end)
                .map(|(head_len, body_start)| (from + head_len, from + body_start));
            let Some((head_len, body_start)) = found else {
                if self.buf.len() > MAX_HEAD {
                    return Some(self.fail(ParseError::TooLarge, None));
                }
                self.searched = self.buf.len();
                return None;
            };
            let head = match message::parse_head(self.buf.get(..head_len).unwrap_or(&[])) {
                Ok(head) => head,
                Err(error) => return Some(self.fail(error, None)),
            };
            let declared = match message::content_length(&head.headers) {
                Ok(declared) => declared.unwrap_or(0),
                Err(error) => return Some(self.fail(error, Some(head))),
            };
            if declared > MAX_BODY {
                return Some(self.fail(ParseError::TooLarge, Some(head)));
            }
            self.pending = Some((head, body_start, body_start + declared));
        }
        let end = self.pending.as_ref().map_or(0, |(_, _, end)| *end);
        if self.buf.len() < end {
            return None;
        }
        let (head, body_start, end) = self.pending.take()?;
        let body = self.buf.get(body_start..end).unwrap_or(&[]).to_vec();
        self.buf.drain(..end);
        self.searched = 0;
        Some(StreamItem::Message(head, body))
    }

    fn fail(&mut self, error: ParseError, head: Option<Head>) -> StreamItem {
        self.failed = true;
        self.buf = Vec::new();
        self.pending = None;
        StreamItem::Error(FramingError::new(error, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StartLine;

    const OPTIONS: &str =
        "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody";

    #[test]
    fn datagram_body_sizes() {
        let (_, body) = frame_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nbody")
            .expect("ok")
            .expect("message");
        assert_eq!(body, b"bo");
        let (_, body) = frame_datagram(b"OPTIONS sip:a@b SIP/2.0\r\n\r\nrest")
            .expect("ok")
            .expect("message");
        assert_eq!(body, b"rest");
        let err =
            frame_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nl: 9\r\n\r\nbody").expect_err("short");
        assert_eq!(err.status, 400);
        assert!(err.head.is_some());
        assert_eq!(frame_datagram(b"\r\n\r\n"), Ok(None));
    }

    #[test]
    fn stream_reassembles_any_chunking() {
        let two = format!("\r\n\r\n{OPTIONS}\r\n{OPTIONS}");
        for chunk in 1..two.len() {
            let mut framer = StreamFramer::new();
            let mut got = Vec::new();
            for piece in two.as_bytes().chunks(chunk) {
                framer.push(piece);
                while let Some(item) = framer.next_item() {
                    got.push(item);
                }
            }
            assert_eq!(got.len(), 2, "chunk {chunk}");
            for item in got {
                match item {
                    StreamItem::Message(head, body) => {
                        assert!(matches!(head.start, StartLine::Request(_)));
                        assert_eq!(body, b"body");
                    }
                    StreamItem::Error(e) => panic!("unexpected {e:?}"),
                }
            }
        }
    }

    #[test]
    fn stream_one_byte_chunks_of_a_large_message() {
        let body = "x".repeat(MAX_BODY);
        let msg = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
            "p".repeat(MAX_HEAD / 2),
            body.len()
        );
        let mut framer = StreamFramer::new();
        let mut got = 0;
        for byte in msg.as_bytes() {
            framer.push(std::slice::from_ref(byte));
            while let Some(item) = framer.next_item() {
                assert!(matches!(item, StreamItem::Message(_, ref b) if b.len() == MAX_BODY));
                got += 1;
            }
        }
        assert_eq!(got, 1);
    }

    #[test]
    fn stream_errors_are_final() {
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(framer.next_item(), Some(StreamItem::Error(e)) if e.head.is_some()));
        assert!(framer.has_failed());
        framer.push(OPTIONS.as_bytes());
        assert_eq!(framer.next_item(), None);
        let mut garbage = StreamFramer::new();
        garbage.push(&[0xff; 100]);
        garbage.push(b"\r\n\r\n");
        assert!(matches!(garbage.next_item(), Some(StreamItem::Error(e)) if e.head.is_none()));
        let mut endless = StreamFramer::new();
        endless.push(&vec![b'a'; MAX_HEAD + 1]);
        assert!(matches!(endless.next_item(), Some(StreamItem::Error(e)) if e.status == 513));
    }
}
