//! WebSocket transport: the upgrade handshake, the choice of protocol by subprotocol, and a
//! byte-stream adapter so that a protocol's `serve` runs unchanged over WebSocket messages.
//!
//! One listener (`ws_listen`, and `wss_listen` behind TLS) serves every protocol on the path
//! RabbitMQ's Web MQTT and Web STOMP plugins use, `/ws`. The client's `Sec-WebSocket-Protocol`
//! list picks the protocol: the first name in the client's order that [`protocol_for`] maps to a
//! protocol this broker serves. A request that is not a WebSocket upgrade, asks for another path,
//! or offers no served subprotocol gets an HTTP error answer (400, 404, 405, 426, 431) and a
//! close.
//!
//! The HTTP request is parsed here with httparse rather than by tungstenite's server handshake,
//! which drops a request that is not an upgrade without any HTTP answer; tungstenite does the
//! framing (masking, fragmentation, ping/pong, close) once the upgrade is answered.
//!
//! Adding a protocol: a [`WsProtocol`] variant, its names in [`protocol_for`] and [`OFFERED`],
//! and its arm in main.rs (`WsServices`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Paths a WebSocket client may ask for (RabbitMQ's `web_mqtt.ws_path` and
/// `web_stomp.ws_path` default). A query string is ignored.
pub const PATHS: &[&str] = &["/ws"];

/// Largest upgrade request (request line and headers) accepted.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Most headers in an upgrade request.
const REQUEST_HEADERS_MAX: usize = 48;

/// A protocol served over WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProtocol {
    /// MQTT 3.1/3.1.1/5.0: subprotocols `mqtt` (3.1.1 and 5.0, MQTT-6.0.0-3) and `mqttv3.1`.
    Mqtt,
    /// STOMP 1.0/1.1/1.2: subprotocols `v10.stomp`, `v11.stomp`, `v12.stomp` (as RabbitMQ's Web
    /// STOMP). The STOMP version itself is still negotiated by CONNECT's accept-version.
    Stomp,
}

/// The subprotocols served, for the refusal message.
const OFFERED: &str = "mqtt, mqttv3.1, v12.stomp, v11.stomp, v10.stomp";

impl WsProtocol {
    /// Whether text messages carry protocol bytes too. MQTT: binary only; a text message closes
    /// the connection (MQTT-6.0.0-1). STOMP frames are text and come in either kind of message
    /// (STOMP.js sends text, binary when a body holds NULs).
    fn text_allowed(self) -> bool {
        match self {
            WsProtocol::Mqtt => false,
            WsProtocol::Stomp => true,
        }
    }
}

/// The protocol a subprotocol name selects, if this broker serves it. Names are
/// case-insensitive (RFC 6455 says they are tokens; clients send them lower case).
pub fn protocol_for(name: &str) -> Option<WsProtocol> {
    match name.to_ascii_lowercase().as_str() {
        "mqtt" | "mqttv3.1" => Some(WsProtocol::Mqtt),
        "v10.stomp" | "v11.stomp" | "v12.stomp" => Some(WsProtocol::Stomp),
        _ => None,
    }
}

/// Largest WebSocket message (and frame) accepted, per protocol: the protocol's own limit rather
/// than tungstenite's defaults (64 MiB messages, 16 MiB frames), so that nothing larger than one
/// packet or frame is buffered before the protocol could refuse it. A larger message closes the
/// connection with 1009 (message too big, RFC 6455 7.4.1), even one that packs several smaller
/// packets (MQTT-6.0.0-2 lets a client do that; none is known to send that much at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// MQTT: `mqtt.packet_bytes_max`.
    pub mqtt_bytes_max: usize,
    /// STOMP: `stomp.frame_bytes_max`, plus [`STOMP_EOL_HEADROOM_BYTES`].
    pub stomp_bytes_max: usize,
}

/// Room for heart-beat EOLs (`\r\n`) a STOMP client sends in the same message as a frame of the
/// largest size.
pub const STOMP_EOL_HEADROOM_BYTES: usize = 16;

impl MessageLimits {
    /// From the protocols' limits; the STOMP one gets the EOL headroom.
    pub fn new(mqtt_packet_bytes_max: usize, stomp_frame_bytes_max: usize) -> Self {
        MessageLimits {
            mqtt_bytes_max: mqtt_packet_bytes_max,
            stomp_bytes_max: stomp_frame_bytes_max.saturating_add(STOMP_EOL_HEADROOM_BYTES),
        }
    }

    fn for_protocol(self, protocol: WsProtocol) -> usize {
        match protocol {
            WsProtocol::Mqtt => self.mqtt_bytes_max,
            WsProtocol::Stomp => self.stomp_bytes_max,
        }
    }
}

/// Why an upgrade was refused (the HTTP answer was sent already, when the peer was there to
/// get it).
#[derive(Debug, thiserror::Error)]
pub enum WsRefused {
    #[error("HTTP {status}: {reason}")]
    Http { status: u16, reason: String },
    #[error("upgrade request not complete within the handshake timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads the upgrade request, answers it, and returns the WebSocket as a byte stream with the
/// protocol the client picked. Refusals are answered with an HTTP error before returning.
///
/// # Errors
/// [`WsRefused`] for anything but a valid upgrade to a served subprotocol.
pub async fn accept<S>(
    mut stream: S,
    timeout: Duration,
    limits: MessageLimits,
) -> Result<(WsStream<S>, WsProtocol, String), WsRefused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (request, tail) = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
        Err(_) => return Err(WsRefused::Timeout),
        Ok(r) => r?,
    };
    let (protocol, name, accept_key) = match check_request(&request) {
        Ok(chosen) => chosen,
        Err((status, reason)) => {
            let _ = tokio::time::timeout(timeout, refuse(&mut stream, status, &reason)).await;
            return Err(WsRefused::Http { status, reason });
        }
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\nSec-WebSocket-Protocol: {name}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await?;
    // Unbuffered writes: each write of the session goes out as one message at once (sessions
    // batch their own output).
    let message_bytes_max = limits.for_protocol(protocol);
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(Some(message_bytes_max))
        .max_frame_size(Some(message_bytes_max));
    let ws = WebSocketStream::from_partially_read(stream, tail, Role::Server, Some(config)).await;
    Ok((WsStream::new(ws, protocol.text_allowed()), protocol, name))
}

/// The request head as parsed, owned.
#[derive(Debug, Default)]
struct Request {
    method: String,
    path: String,
    /// (lower-case name, value)
    headers: Vec<(String, String)>,
}

impl Request {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every `name` header.
    fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// Reads up to the end of the request head. Returns the head and any bytes after it (a client
/// may send its first frame right behind the request).
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), WsRefused> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = match stream.read_buf(&mut buf).await {
            Ok(n) => n,
            // How much of the request came tells a client that never sent it (0 bytes) from one
            // that stopped half-way.
            Err(e) => {
                return Err(WsRefused::Io(io::Error::new(
                    e.kind(),
                    format!("after {} bytes of the upgrade request: {e}", buf.len()),
                )))
            }
        };
        if read == 0 {
            return Err(WsRefused::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} bytes of the upgrade request",
                    buf.len()
                ),
            )));
        }
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf);
        let refusal = match parsed {
            Ok(httparse::Status::Complete(n)) => {
                let request = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok((request, buf[n..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() < REQUEST_BYTES_MAX => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                (431, "request header fields too large".to_string())
            }
            Err(e) => (400, format!("not an HTTP request: {e}")),
        };
        let _ = refuse(stream, refusal.0, &refusal.1).await;
        return Err(WsRefused::Http {
            status: refusal.0,
            reason: refusal.1,
        });
    }
}

/// Checks the upgrade and picks the subprotocol: (protocol, its name as the client spelt it,
/// Sec-WebSocket-Accept), or (HTTP status, reason).
fn check_request(req: &Request) -> Result<(WsProtocol, String, String), (u16, String)> {
    if req.method != "GET" {
        return Err((405, format!("method {} not allowed: GET only", req.method)));
    }
    let path = req.path.split('?').next().unwrap_or_default();
    if !PATHS.contains(&path) {
        return Err((
            404,
            format!("no WebSocket endpoint at {path}: use {}", PATHS.join(" ")),
        ));
    }
    let upgrade = req
        .tokens("upgrade")
        .any(|t| t.eq_ignore_ascii_case("websocket"));
    let connection = req
        .tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !upgrade || !connection {
        return Err((
            400,
            "not a WebSocket upgrade request (Upgrade: websocket and Connection: Upgrade needed)"
                .to_string(),
        ));
    }
    if !req
        .values("sec-websocket-version")
        .any(|v| v.trim() == "13")
    {
        return Err((426, "Sec-WebSocket-Version 13 needed".to_string()));
    }
    let key = req.values("sec-websocket-key").next().map(str::trim);
    let Some(key) = key.filter(|k| k.len() == 24) else {
        return Err((400, "missing or bad Sec-WebSocket-Key".to_string()));
    };
    for name in req.tokens("sec-websocket-protocol") {
        if let Some(p) = protocol_for(name) {
            return Ok((p, name.to_string(), derive_accept_key(key.as_bytes())));
        }
    }
    Err((
        400,
        format!("no supported subprotocol in Sec-WebSocket-Protocol (offered: {OFFERED})"),
    ))
}

/// Sends an HTTP error answer; the caller then drops the connection.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
) -> io::Result<()> {
    let text = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = match status {
        405 => "Allow: GET\r\n",
        426 => "Sec-WebSocket-Version: 13\r\n",
        _ => "",
    };
    let body = format!("{reason}\n");
    let answer = format!(
        "HTTP/1.1 {status} {text}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// WebSocket messages as a byte stream: reads give the payloads of data messages in order (a
/// protocol packet may span messages, or a message hold several packets: MQTT-6.0.0-2); each
/// write goes out as one binary message. Pings are answered by tungstenite; a close message
/// reads as end of stream; shutdown sends a close.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message read.
    pending: Bytes,
    text_allowed: bool,
    eof: bool,
    /// The close code and reason shutdown sends, when reading found a reason to close (a text
    /// message on a binary-only protocol: 1003; a message over the limit: 1009); a plain close
    /// otherwise.
    close_with: Option<CloseFrame>,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>, text_allowed: bool) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            text_allowed,
            eof: false,
            close_with: None,
        }
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => this.eof = true,
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(text))) if this.text_allowed => this.pending = text.into(),
                Some(Ok(Message::Text(_))) => {
                    this.close_with = Some(CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "text messages are not allowed (MQTT-6.0.0-1)".into(),
                    });
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary-only WebSocket protocol (MQTT-6.0.0-1)",
                    )));
                }
                // Pings are answered by tungstenite on the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => this.eof = true,
                // Refused from the frame header, before its payload is buffered.
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    this.close_with = Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: e.to_string().into(),
                    });
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        // Push it out now; what the socket does not take yet goes with the next poll (sessions
        // also flush once their output is written).
        if let Poll::Ready(Err(e)) = Pin::new(&mut *ws).poll_flush(cx) {
            return Poll::Ready(Err(to_io(e)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.close_with.is_some() {
            let ws = &mut self.ws;
            ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
            let frame = self.close_with.take();
            // The close handshake starts with our frame; poll_close below flushes it.
            if let Err(e) = Pin::new(&mut self.ws).start_send(Message::Close(frame)) {
                return Poll::Ready(Err(to_io(e)));
            }
        }
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    const LIMITS: MessageLimits = MessageLimits {
        mqtt_bytes_max: 1024,
        stomp_bytes_max: 1024,
    };

    /// A server stream accepted with `extra` upgrade headers, and the client's WebSocket on the
    /// other end, past the 101 answer.
    async fn upgraded(extra: &str) -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (mut client, server) = duplex(64 * 1024);
        client.write_all(upgrade(extra).as_bytes()).await.unwrap();
        let (stream, _, _) = accept(server, Duration::from_secs(5), LIMITS)
            .await
            .unwrap();
        // The 101 answer, up to the blank line.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (stream, ws)
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    /// Sends `request`, returns the server's result and everything the client got back.
    async fn handshake(
        request: &str,
    ) -> (
        Result<(WsStream<DuplexStream>, WsProtocol, String), WsRefused>,
        String,
        DuplexStream,
    ) {
        let (mut client, server) = duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.unwrap();
        let result = accept(server, Duration::from_secs(5), LIMITS).await;
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(200), client.read(&mut got))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        (
            result,
            String::from_utf8_lossy(&got[..n]).into_owned(),
            client,
        )
    }

    #[tokio::test]
    async fn protocol_is_chosen_by_subprotocol() {
        // The first served name in the client's order wins.
        let (result, _, _c) = handshake(&upgrade(
            "Sec-WebSocket-Protocol: chat, v12.stomp, mqtt\r\n",
        ))
        .await;
        let (_, protocol, name) = result.unwrap();
        assert_eq!((protocol, name.as_str()), (WsProtocol::Stomp, "v12.stomp"));
        let (result, _, _c) = handshake(&upgrade("Sec-WebSocket-Protocol: V10.STOMP\r\n")).await;
        assert_eq!(result.unwrap().1, WsProtocol::Stomp);

        let (result, answer, _c) = handshake(&upgrade(
            "Sec-WebSocket-Protocol: chat, mqtt, v12.stomp\r\n",
        ))
        .await;
        let (_, protocol, name) = result.unwrap();
        assert_eq!(protocol, WsProtocol::Mqtt);
        assert_eq!(name, "mqtt");
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        // RFC 6455's example key and accept value.
        assert!(
            answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
            "{answer}"
        );

        let (result, answer, _c) =
            handshake(&upgrade("Sec-WebSocket-Protocol: mqttv3.1\r\n")).await;
        assert_eq!(result.unwrap().2, "mqttv3.1");
        assert!(
            answer.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn bad_upgrades_get_http_errors() {
        let cases = [
            (upgrade(""), 400, "no supported subprotocol"),
            (
                upgrade("Sec-WebSocket-Protocol: chat\r\n"),
                400,
                "no supported",
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
                400,
                "not a WebSocket upgrade",
            ),
            (
                upgrade("Sec-WebSocket-Protocol: mqtt\r\n").replace("GET /ws", "GET /mqtt"),
                404,
                "no WebSocket endpoint at /mqtt",
            ),
            (
                upgrade("Sec-WebSocket-Protocol: mqtt\r\n").replace("GET", "POST"),
                405,
                "GET only",
            ),
            (
                upgrade("Sec-WebSocket-Protocol: mqtt\r\n").replace("Version: 13", "Version: 8"),
                426,
                "Version 13",
            ),
            (
                "\x16\x03\x01\x02\x00\x01\x00".to_string(),
                400,
                "not an HTTP request",
            ),
        ];
        for (request, status, needle) in cases {
            let (result, answer, _c) = handshake(&request).await;
            match result {
                Err(WsRefused::Http { status: s, reason }) => {
                    assert_eq!(s, status, "{request:?}: {reason}");
                    assert!(reason.contains(needle), "{request:?}: {reason}");
                }
                other => panic!("{request:?}: {:?}", other.map(|r| r.1)),
            }
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request:?}: {answer}"
            );
            assert!(answer.contains(needle), "{answer}");
        }
    }

    /// A client that goes away mid-request: the error says how much of the request came (the
    /// log line that tells "never sent" from "stopped half-way").
    #[tokio::test]
    async fn closed_mid_request_says_how_much_came() {
        let (mut client, server) = duplex(1024);
        client.write_all(b"GET /ws HTTP/1.1\r\nHost").await.unwrap();
        drop(client);
        let err = accept(server, Duration::from_secs(5), LIMITS)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("connection closed after 22 bytes of the upgrade request"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversized_request_is_refused() {
        let big = upgrade(&format!("X-Filler: {}\r\n", "a".repeat(REQUEST_BYTES_MAX)));
        let (result, answer, _c) = handshake(&big).await;
        assert!(matches!(result, Err(WsRefused::Http { status: 431, .. })));
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    /// Bytes written and read through the adapter travel as binary messages, a packet may span
    /// messages, pings are answered, text is refused for MQTT, and a close reads as EOF.
    #[tokio::test]
    async fn adapter_carries_bytes_both_ways() {
        use futures_util::{SinkExt, StreamExt};
        let (mut stream, mut ws) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;

        ws.send(Message::binary(&b"hel"[..])).await.unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        ws.send(Message::binary(&b"lo"[..])).await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p"))
        );

        stream.write_all(b"world").await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(&b"world"[..])
        );

        ws.send(Message::text("nope")).await.unwrap();
        let err = stream.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        ws.close(None).await.unwrap();
        assert_eq!(stream.read(&mut got).await.unwrap(), 0);
    }

    /// A message over the protocol's limit fails the read and the shutdown closes with 1009;
    /// one at the limit passes.
    #[tokio::test]
    async fn oversized_message_is_closed_with_1009() {
        use futures_util::{SinkExt, StreamExt};
        let (mut stream, mut ws) = upgraded("Sec-WebSocket-Protocol: v12.stomp\r\n").await;
        let mut got = vec![0u8; 4096];

        ws.send(Message::binary(vec![b'a'; LIMITS.stomp_bytes_max]))
            .await
            .unwrap();
        let mut n = 0;
        while n < LIMITS.stomp_bytes_max {
            n += stream.read(&mut got[..]).await.unwrap();
        }
        assert_eq!(n, LIMITS.stomp_bytes_max);

        ws.send(Message::binary(vec![b'a'; LIMITS.stomp_bytes_max + 1]))
            .await
            .unwrap();
        let err = stream.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        stream.shutdown().await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn shutdown_sends_a_close() {
        use futures_util::StreamExt;
        let (mut stream, mut ws) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
        stream.shutdown().await.unwrap();
        assert!(matches!(
            ws.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }
}
