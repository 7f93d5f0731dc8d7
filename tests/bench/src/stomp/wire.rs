//! The few STOMP 1.2 frames the load generator needs, written and parsed by hand.
//!
//! A bench client must cost much less than the broker it measures. `codecs::stomp::decode`
//! turns every MESSAGE into an owned frame (a `String` per header name and value, about ten
//! of them per MESSAGE); here a read buffer is walked in place and a MESSAGE yields borrowed
//! slices: its `ack` header, exactly as it came (escaped: it is only ever sent back, and a
//! value written back in its escaped form is the same value), and its body. The tests check
//! these bytes against `codecs::stomp` both ways, so both sides agree on the wire format.

use anyhow::{anyhow, bail};
use bytes::{BufMut, BytesMut};

/// A frame from the broker, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    Connected,
    /// MESSAGE: its `ack` header (STOMP 1.2, client ack modes), raw; its body.
    Message {
        ack: Option<&'a [u8]>,
        body: &'a [u8],
    },
    /// RECEIPT: its `receipt-id`, raw.
    Receipt {
        id: &'a [u8],
    },
    /// ERROR: its `message` header (raw) and body.
    Error {
        message: &'a [u8],
        body: &'a [u8],
    },
    /// One EOL between frames (a heart-beat, or the optional EOLs after a NUL).
    Heartbeat,
    /// Any other command.
    Other(&'a [u8]),
}

/// The line starting at `from`: its content (without LF and a CR before it), and where the
/// next line starts. `None`: no LF yet.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let lf = from + buf[from..].iter().position(|&b| b == b'\n')?;
    let end = if lf > from && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((&buf[from..end], lf + 1))
}

/// Parses one frame from the front of `buf`: the frame and how many bytes it took, or
/// `None` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> anyhow::Result<Option<(Incoming<'_>, usize)>> {
    match (buf.first(), buf.get(1)) {
        (None, _) | (Some(b'\r'), None) => return Ok(None),
        (Some(b'\n'), _) => return Ok(Some((Incoming::Heartbeat, 1))),
        (Some(b'\r'), Some(b'\n')) => return Ok(Some((Incoming::Heartbeat, 2))),
        _ => {}
    }
    let Some((command, mut pos)) = line(buf, 0) else {
        return Ok(None);
    };
    let (mut content_length, mut ack, mut receipt_id, mut message) = (None, None, None, None);
    loop {
        let Some((header, next)) = line(buf, pos) else {
            return Ok(None);
        };
        pos = next;
        if header.is_empty() {
            break;
        }
        let colon = header
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| anyhow!("header line without ':' in {}", show(command)))?;
        let (name, value) = (&header[..colon], &header[colon + 1..]);
        // The first of repeated headers wins.
        let slot = match name {
            b"content-length" => &mut content_length,
            b"ack" => &mut ack,
            b"receipt-id" => &mut receipt_id,
            b"message" => &mut message,
            _ => continue,
        };
        slot.get_or_insert(value);
    }
    let body_len = match content_length {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or_else(|| anyhow!("bad content-length {:?}", show(v)))?,
        None => match buf[pos..].iter().position(|&b| b == 0) {
            Some(n) => n,
            None => return Ok(None),
        },
    };
    if buf.len() < pos + body_len + 1 {
        return Ok(None);
    }
    if buf[pos + body_len] != 0 {
        bail!("{} frame: no NUL after the body", show(command));
    }
    let body = &buf[pos..pos + body_len];
    let frame = match command {
        b"MESSAGE" => Incoming::Message { ack, body },
        b"RECEIPT" => Incoming::Receipt {
            id: receipt_id.unwrap_or_default(),
        },
        b"ERROR" => Incoming::Error {
            message: message.unwrap_or_default(),
            body,
        },
        b"CONNECTED" => Incoming::Connected,
        other => Incoming::Other(other),
    };
    Ok(Some((frame, pos + body_len + 1)))
}

/// Bytes as text for messages.
pub(crate) fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_u8(b':');
    out.put_slice(value);
    out.put_u8(b'\n');
}

/// CONNECT for STOMP 1.2, no heart-beats. (CONNECT headers are never escaped.)
pub(crate) fn connect(out: &mut BytesMut, host: &str, login: &str, passcode: &str) {
    out.put_slice(b"CONNECT\n");
    header(out, "accept-version", b"1.2");
    header(out, "host", host.as_bytes());
    header(out, "login", login.as_bytes());
    header(out, "passcode", passcode.as_bytes());
    header(out, "heart-beat", b"0,0");
    out.put_slice(b"\n\0");
}

/// SUBSCRIBE with an ack mode, an optional prefetch-count and a receipt. Names and values
/// must need no escaping (the caller's are plain).
pub(crate) fn subscribe(
    out: &mut BytesMut,
    id: &str,
    destination: &str,
    ack: &str,
    prefetch: Option<u32>,
    receipt: &str,
) {
    out.put_slice(b"SUBSCRIBE\n");
    header(out, "id", id.as_bytes());
    header(out, "destination", destination.as_bytes());
    header(out, "ack", ack.as_bytes());
    if let Some(p) = prefetch {
        header(out, "prefetch-count", p.to_string().as_bytes());
    }
    header(out, "receipt", receipt.as_bytes());
    out.put_slice(b"\n\0");
}

/// SEND with a content-length (the body is binary); `persistent:true` when asked, and a
/// receipt header when `receipt` is given.
pub(crate) fn send(
    out: &mut BytesMut,
    destination: &str,
    body: &[u8],
    persistent: bool,
    receipt: Option<u64>,
) {
    out.reserve(body.len() + 96);
    out.put_slice(b"SEND\n");
    header(out, "destination", destination.as_bytes());
    header(out, "content-length", body.len().to_string().as_bytes());
    if persistent {
        header(out, "persistent", b"true");
    }
    if let Some(r) = receipt {
        header(out, "receipt", r.to_string().as_bytes());
    }
    out.put_u8(b'\n');
    out.put_slice(body);
    out.put_u8(0);
}

/// ACK (1.2: `id` = the MESSAGE's `ack` header, sent back as it came).
pub(crate) fn ack(out: &mut BytesMut, id: &[u8]) {
    out.put_slice(b"ACK\n");
    header(out, "id", id);
    out.put_slice(b"\n\0");
}

pub(crate) fn disconnect(out: &mut BytesMut, receipt: &str) {
    out.put_slice(b"DISCONNECT\n");
    header(out, "receipt", receipt.as_bytes());
    out.put_slice(b"\n\0");
}

#[cfg(test)]
mod tests {
    use super::*;
    use codecs::stomp::{self, Command, Frame, Item, Limits, Version};

    fn server_decode(buf: &mut BytesMut) -> Frame {
        match stomp::decode(buf, Version::V1_2, &Limits::default()) {
            Ok(Some(Item::Frame(f))) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_frames_decode_with_the_codec() {
        let mut buf = BytesMut::new();
        connect(&mut buf, "/", "guest", "guest");
        subscribe(
            &mut buf,
            "0",
            "/queue/b-1",
            "client-individual",
            Some(1000),
            "sub",
        );
        let body: Vec<u8> = (0..1024).map(|i| i as u8).collect(); // holds NULs
        send(&mut buf, "/queue/b-1", &body, true, Some(100));
        send(&mut buf, "/queue/b-1", &body[..16], false, None);
        ack(&mut buf, b"T_0@@session-1@@42");
        disconnect(&mut buf, "bye");

        let f = server_decode(&mut buf);
        assert_eq!(f.command, Command::Connect);
        assert_eq!(f.header("accept-version"), Some("1.2"));
        assert_eq!(f.header("host"), Some("/"));
        assert_eq!(f.header("login"), Some("guest"));
        assert_eq!(f.header("passcode"), Some("guest"));
        assert_eq!(f.header("heart-beat"), Some("0,0"));
        let f = server_decode(&mut buf);
        assert_eq!(f.command, Command::Subscribe);
        assert_eq!(f.header("id"), Some("0"));
        assert_eq!(f.header("destination"), Some("/queue/b-1"));
        assert_eq!(f.header("ack"), Some("client-individual"));
        assert_eq!(f.header("prefetch-count"), Some("1000"));
        assert_eq!(f.header("receipt"), Some("sub"));
        let f = server_decode(&mut buf);
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("persistent"), Some("true"));
        assert_eq!(f.header("receipt"), Some("100"));
        assert_eq!(&f.body[..], &body[..]);
        let f = server_decode(&mut buf);
        assert_eq!(f.header("persistent"), None);
        assert_eq!(f.header("receipt"), None);
        assert_eq!(f.body.len(), 16);
        let f = server_decode(&mut buf);
        assert_eq!(f.command, Command::Ack);
        assert_eq!(f.header("id"), Some("T_0@@session-1@@42"));
        let f = server_decode(&mut buf);
        assert_eq!(f.command, Command::Disconnect);
        assert_eq!(f.header("receipt"), Some("bye"));
        assert!(buf.is_empty());
    }

    #[test]
    fn server_frames_from_the_codec_parse() {
        let body: Vec<u8> = (0..1024).map(|i| (i % 7) as u8).collect();
        let message = Frame::new(Command::Message)
            .with("subscription", "0")
            .with("destination", "/queue/b-1")
            .with("message-id", "T_0@@s:1@@7")
            .with("ack", "T_0@@s:1@@7") // escaped on the wire as T_0@@s\c1@@7
            .with("ack", "ignored")
            .with("content-length", "1024")
            .with_body(body.clone());
        let mut wire = BytesMut::new();
        stomp::encode(&message, Version::V1_2, &mut wire).unwrap();
        wire.put_slice(b"\r\n");
        let receipt = Frame::new(Command::Receipt).with("receipt-id", "77");
        stomp::encode(&receipt, Version::V1_2, &mut wire).unwrap();
        let error = Frame::new(Command::Error)
            .with("message", "boom")
            .with_body(&b"detail"[..]);
        stomp::encode(&error, Version::V1_2, &mut wire).unwrap();

        let mut at = 0;
        let (f, n) = parse(&wire[at..]).unwrap().unwrap();
        let raw_ack: &[u8] = b"T_0@@s\\c1@@7";
        assert_eq!(
            f,
            Incoming::Message {
                ack: Some(raw_ack),
                body: &body
            }
        );
        // Sent back raw, the ack id is the value the broker wrote.
        let mut back = BytesMut::new();
        ack(&mut back, raw_ack);
        assert_eq!(server_decode(&mut back).header("id"), Some("T_0@@s:1@@7"));
        at += n;
        assert_eq!(
            parse(&wire[at..]).unwrap().unwrap(),
            (Incoming::Heartbeat, 2)
        );
        at += 2;
        let (f, n) = parse(&wire[at..]).unwrap().unwrap();
        assert_eq!(f, Incoming::Receipt { id: b"77" });
        at += n;
        let (f, n) = parse(&wire[at..]).unwrap().unwrap();
        assert_eq!(
            f,
            Incoming::Error {
                message: b"boom",
                body: b"detail"
            }
        );
        at += n;
        assert_eq!(at, wire.len());
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let message = Frame::new(Command::Message)
            .with("ack", "1")
            .with("content-length", "3")
            .with_body(&b"a\0c"[..]);
        let mut wire = BytesMut::new();
        stomp::encode(&message, Version::V1_2, &mut wire).unwrap();
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (f, n) = parse(&wire).unwrap().unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(
            f,
            Incoming::Message {
                ack: Some(b"1"),
                body: b"a\0c"
            }
        );
    }

    #[test]
    fn a_body_without_its_nul_is_an_error() {
        assert!(parse(b"MESSAGE\ncontent-length:1\n\nab").is_err());
    }
}
