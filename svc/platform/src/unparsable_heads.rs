//! hyper answers an HTTP/1 request head it cannot parse (a malformed line or header field,
//! too many or too large header fields, a target too long) with a bare 400, 431 or 414 of its
//! own, written to the socket before its connection ends with the parse error: it has no hook
//! for a body. The connection's socket is wrapped so that such an answer goes out as
//! problem+json instead, as every other client mistake does.
//!
//! The wrapper cannot tell hyper's answer from the same bytes written as the last part of a
//! response body, so it holds any write of that form unsent, and decides only once the
//! connection has gone on (the bytes go as they are, first) or ended: with a parse error
//! (the problem goes in their place), or otherwise (they go as they are).
//!
//! It sees hyper's answer whole only because HTTP/1.1 is written from one flattened buffer
//! (`writev(false)` in `runtime::serve_connections_with`); HTTP/2 writes vectored, which
//! passes straight through. No server of ours upgrades a connection (a 101 and what follows
//! would pass through the same check).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use poem::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::context::RequestId;
use crate::problem::{self, Problem};
use crate::runtime::MAX_CONNECTION_BUFFER;

/// The header fields hyper writes into each of its answers to an unparsable head, between the
/// status line and the date's value (hyper 1.x, `proto::h1::role::Server::encode_headers`),
/// after the `connection: close` it adds to a connection it will not keep.
const HYPERS_FIELDS: &[u8] = b"content-length: 0\r\ndate: ";
const HYPERS_CLOSE: &[u8] = b"connection: close\r\n";
/// The length of an HTTP date (`Thu, 26 Nov 2026 19:36:45 GMT`), then the head's end.
const DATE_AND_END: usize = 29 + 4;

/// The versions hyper answers in: 1.1, or 1.0 on a connection that began with HTTP/1.0.
const VERSIONS: [&[u8]; 2] = [b"HTTP/1.1 ", b"HTTP/1.0 "];
/// hyper's statuses for a head it cannot parse, and what each means to the client.
const HYPERS_ANSWERS: [(&[u8], StatusCode, &str, &str); 3] = [
    (
        b"400 Bad Request\r\n",
        StatusCode::BAD_REQUEST,
        "malformed-request",
        "the request head is not valid HTTP/1.1: its request line or a header field is malformed",
    ),
    (
        b"431 Request Header Fields Too Large\r\n",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request-head-too-large",
        "the request head is too large: at most 100 header fields are accepted",
    ),
    (
        b"414 URI Too Long\r\n",
        StatusCode::URI_TOO_LONG,
        "uri-too-long",
        "the request target is too long",
    ),
];

/// Where in `written` hyper's answer to an unparsable head begins, and which it is, if
/// `written` ends with one.
fn hypers_answer_in(written: &[u8]) -> Option<(usize, usize)> {
    // Answers with a body end otherwise: one comparison for nearly every write.
    if !written.ends_with(b"\r\n\r\n") || written.len() < DATE_AND_END {
        return None;
    }
    let before_date = &written[..written.len() - DATE_AND_END];
    let mut fields_start = before_date.len().checked_sub(HYPERS_FIELDS.len())?;
    if &before_date[fields_start..] != HYPERS_FIELDS {
        return None;
    }
    if before_date[..fields_start].ends_with(HYPERS_CLOSE) {
        fields_start -= HYPERS_CLOSE.len();
    }
    HYPERS_ANSWERS
        .iter()
        .enumerate()
        .find_map(|(which, (status_line, ..))| {
            let status_start = fields_start.checked_sub(status_line.len())?;
            if written[status_start..fields_start] != **status_line {
                return None;
            }
            let start = status_start.checked_sub(VERSIONS[0].len())?;
            VERSIONS
                .contains(&&written[start..status_start])
                .then_some((start, which))
        })
}

/// `written` with hyper's answer at `start` (answer `which` of [`HYPERS_ANSWERS`]) replaced by
/// the same status with a problem+json body, its date kept, going by `request_id`.
fn as_problem(written: &[u8], start: usize, which: usize, request_id: &RequestId) -> Vec<u8> {
    let (_, status, kind, detail) = HYPERS_ANSWERS[which];
    let detail = if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        format!("{detail}, of {MAX_CONNECTION_BUFFER} bytes in all")
    } else {
        detail.to_owned()
    };
    let body = Problem::new(status, kind, detail)
        .http_response(Some(request_id.as_str().to_owned()))
        .into_body();
    let date = &written[written.len() - DATE_AND_END..written.len() - 4];
    let version = &written[start..start + VERSIONS[0].len()];
    let mut answer = written[..start].to_vec();
    answer.extend_from_slice(version);
    answer.extend_from_slice(
        format!(
            "{} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}: {request_id}\r\nconnection: close\r\ndate: ",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            problem::CONTENT_TYPE,
            body.len(),
            crate::context::REQUEST_ID,
        )
        .as_bytes(),
    );
    answer.extend_from_slice(date);
    answer.extend_from_slice(b"\r\n\r\n");
    answer.extend_from_slice(&body);
    answer
}

/// A server connection's socket, holding back a write that may be hyper's answer to an
/// unparsable head (see the module's documentation).
pub(crate) struct ProblemForUnparsableHeads {
    /// Taken only when dropped, to send what is held.
    socket: Option<TcpStream>,
    held: Option<Held>,
    /// Whether the connection's task has been woken since bytes were held.
    woken: bool,
    /// Set by the connection's task when hyper ends the connection with a parse error: the
    /// id its answer goes by (hyper read no head to take one from).
    ended_by_parse_error: Arc<OnceLock<RequestId>>,
}

/// Bytes hyper wrote that end as its answer to an unparsable head would.
struct Held {
    bytes: Vec<u8>,
    /// How many of them have been sent since the connection went on.
    sent: usize,
    /// Where that answer begins in them, and which of [`HYPERS_ANSWERS`] it is.
    hypers_answer: (usize, usize),
}

/// The socket of a connection not yet dropped.
fn open(socket: &mut Option<TcpStream>) -> Pin<&mut TcpStream> {
    Pin::new(
        socket
            .as_mut()
            .expect("the socket is taken only when dropped"),
    )
}

impl ProblemForUnparsableHeads {
    /// `socket`, and where the connection's task sets a request id when hyper ends the
    /// connection with a parse error.
    pub(crate) fn new(socket: TcpStream) -> (Self, Arc<OnceLock<RequestId>>) {
        let ended_by_parse_error = Arc::new(OnceLock::new());
        let wrapped = Self {
            socket: Some(socket),
            held: None,
            woken: false,
            ended_by_parse_error: ended_by_parse_error.clone(),
        };
        (wrapped, ended_by_parse_error)
    }

    fn socket(&mut self) -> Pin<&mut TcpStream> {
        open(&mut self.socket)
    }

    /// Sends what is held: the connection went on, so it was no answer to a parse error.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = &mut self.held {
            if held.sent == held.bytes.len() {
                self.held = None;
                break;
            }
            let n = ready!(open(&mut self.socket).poll_write(cx, &held.bytes[held.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            held.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether hyper ended a connection because it could not parse a request head (after
/// answering it). Only hyper's own error counts, not one it carries from elsewhere.
pub(crate) fn is_parse_error(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_parse() && !e.is_parse_version_h2())
}

/// How long a connection's last bytes, held until it ended, may take to go out, and how long
/// what its client still sends is then read and thrown away.
const LAST_WORDS_LIMIT: Duration = Duration::from_secs(5);
const LINGER: Duration = Duration::from_secs(1);

impl Drop for ProblemForUnparsableHeads {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let Some(socket) = self.socket.take() else {
            return;
        };
        let out = match self.ended_by_parse_error.get() {
            Some(request_id) if held.sent == 0 => {
                let (start, which) = held.hypers_answer;
                as_problem(&held.bytes, start, which, request_id)
            }
            _ => held.bytes[held.sent..].to_vec(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send_last_words(socket, out));
            }
            // The runtime is going away: what the socket takes at once is all that goes.
            Err(_) => {
                let _ = socket.try_write(&out);
            }
        }
    }
}

/// Sends `out` on a connection hyper has finished with, then closes it the way nginx's
/// lingering close does: hyper stops reading at a parse error, often before the end of what
/// the client sent, and a socket closed with bytes unread resets the connection, which can
/// lose the answer on the client's side.
async fn send_last_words(mut socket: TcpStream, out: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sent = tokio::time::timeout(LAST_WORDS_LIMIT, socket.write_all(&out)).await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("a connection's last answer could not be sent whole");
        return;
    }
    let _ = socket.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(socket.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl AsyncRead for ProblemForUnparsableHeads {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_some() {
            ready!(this.poll_send_held(cx))?;
        }
        this.socket().poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemForUnparsableHeads {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_some() {
            ready!(this.poll_send_held(cx))?;
        }
        if let Some(hypers_answer) = hypers_answer_in(buf) {
            this.held = Some(Held {
                bytes: buf.to_vec(),
                sent: 0,
                hypers_answer,
            });
            this.woken = false;
            return Poll::Ready(Ok(buf.len()));
        }
        this.socket().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // HTTP/2's writes: never held (see the module's documentation).
        let this = self.get_mut();
        if this.held.is_some() {
            ready!(this.poll_send_held(cx))?;
        }
        this.socket().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_some() && !this.woken {
            // Held bytes stay held through this poll of the connection: after its answer to
            // an unparsable head, hyper shuts the socket down and ends with the error in the
            // same poll. A connection that goes on reads or writes again, which sends them;
            // woken once, it does so even if it was left waiting only on something else
            // (a request body's reader, say) with its read already pending.
            this.woken = true;
            cx.waker().wake_by_ref();
        }
        this.socket().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_some() {
            // hyper shuts the socket down before it reports its parse error: the held bytes,
            // whichever they turn out to be, are sent when the socket is dropped, which
            // closes it.
            return Poll::Ready(Ok(()));
        }
        this.socket().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Thu, 26 Nov 2026 19:36:45 GMT";

    /// hyper's answer with `status_line`, as it writes it on a connection it closes.
    fn hypers(status_line: &str) -> Vec<u8> {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn each_of_hypers_answers_is_found_after_whatever_preceded_it() {
        for (which, status_line) in [
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 431 Request Header Fields Too Large",
            "HTTP/1.1 414 URI Too Long",
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(hypers_answer_in(&hypers(status_line)), Some((0, which)));
            // On a connection that began with HTTP/1.0: that version, no connection field.
            let old = format!(
                "{}\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n",
                status_line.replace("HTTP/1.1", "HTTP/1.0")
            );
            assert_eq!(hypers_answer_in(old.as_bytes()), Some((0, which)));
            let problem = as_problem(old.as_bytes(), 0, which, &crate::context::new_request_id());
            assert!(problem.starts_with(&old.as_bytes()[..status_line.len()]));
            let mut after = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
            let start = after.len();
            after.extend_from_slice(&hypers(status_line));
            assert_eq!(hypers_answer_in(&after), Some((start, which)));
        }
    }

    #[test]
    fn other_answers_are_not_taken_for_hypers() {
        for other in [
            hypers("HTTP/1.1 404 Not Found"),
            hypers("HTTP/1.2 400 Bad Request"),
            hypers("HTTP/1.1 200 OK"),
            format!("HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n").into_bytes(),
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            b"\r\n\r\n".to_vec(),
            Vec::new(),
        ] {
            assert_eq!(
                hypers_answer_in(&other),
                None,
                "{}",
                String::from_utf8_lossy(&other)
            );
        }
    }

    #[test]
    fn the_problem_keeps_the_status_the_date_and_what_preceded_it() {
        let mut written = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        let start = written.len();
        written.extend_from_slice(&hypers("HTTP/1.1 431 Request Header Fields Too Large"));
        let answer = as_problem(&written, start, 1, &crate::context::new_request_id());
        let text = String::from_utf8(answer).unwrap();
        let (before, problem) = text.split_at(start);
        assert_eq!(before, "HTTP/1.1 204 No Content\r\n\r\n");
        let (head, body) = problem.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/problem+json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.ends_with(&format!("\r\ndate: {DATE}")));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["status"], 431);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("100 header fields")
        );
    }
}
