//! Decoder and encoder tests: captured stomp.py sessions (`fixtures/`, made by `capture.py`),
//! escaping per version, limits, and every error.

use bytes::BytesMut;

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/stomp/fixtures")
        .join(name);
    std::fs::read(path).expect("fixture present")
}

/// Decodes every item of `data`, failing on an error or leftover bytes.
fn items(data: &[u8], version: Version) -> Vec<Item> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Some(item) = decode(&mut buf, version, &Limits::default()).expect("decodes") {
        out.push(item);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

fn frames(data: &[u8], version: Version) -> Vec<Frame> {
    items(data, version)
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::Heartbeat => None,
        })
        .collect()
}

fn one(data: &[u8], version: Version) -> Frame {
    let mut f = frames(data, version);
    assert_eq!(f.len(), 1);
    f.remove(0)
}

fn err(data: &[u8], version: Version, limits: &Limits) -> Error {
    let mut buf = BytesMut::from(data);
    loop {
        match decode(&mut buf, version, limits) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error, wants more"),
            Err(e) => return e,
        }
    }
}

fn commands(frames: &[Frame]) -> Vec<&'static str> {
    frames.iter().map(|f| f.command.as_str()).collect()
}

#[test]
fn stomppy_1_2_session_decodes() {
    let f = frames(&fixture("stomppy_1_2.bin"), Version::V1_2);
    assert_eq!(
        commands(&f),
        [
            "STOMP",
            "SUBSCRIBE",
            "SEND",
            "SEND",
            "BEGIN",
            "SEND",
            "COMMIT",
            "ACK",
            "NACK",
            "UNSUBSCRIBE",
            "DISCONNECT"
        ]
    );
    assert_eq!(f[0].header("accept-version"), Some("1.2"));
    assert_eq!(f[0].header("host"), Some("/"));
    assert_eq!(f[0].header("login"), Some("guest"));
    // Escaped by stomp.py, unescaped here.
    assert_eq!(f[2].header("x-key"), Some("a:b\nc\\d"));
    assert_eq!(&f[2].body[..], b"hello");
    // content-length carries a NUL inside the body.
    assert_eq!(&f[3].body[..], b"bin\0ary");
    assert_eq!(f[5].header("transaction"), Some("tx1"));
    assert_eq!(f[7].header("id"), Some("a-1"));
    assert_eq!(f[10].header("receipt"), Some("bye"));
}

#[test]
fn stomppy_1_1_session_decodes() {
    let f = frames(&fixture("stomppy_1_1.bin"), Version::V1_1);
    assert_eq!(f.len(), 11);
    assert_eq!(f[0].command, Command::Stomp);
    assert_eq!(f[2].header("x-key"), Some("a:b\nc\\d"));
    assert_eq!(f[7].command, Command::Ack);
    assert_eq!(f[7].header("message-id"), Some("m-1"));
    assert_eq!(f[7].header("subscription"), Some("1"));
}

#[test]
fn stomppy_1_0_session_decodes_without_unescaping() {
    let f = frames(&fixture("stomppy_1_0.bin"), Version::V1_0);
    assert_eq!(f.len(), 10);
    assert_eq!(f[0].command, Command::Connect);
    assert_eq!(f[0].header("accept-version"), Some("1.0"));
    // 1.0: the value is everything after the first ':', backslashes kept.
    assert_eq!(f[2].header("x-key"), Some("a:b c\\d"));
    assert_eq!(&f[3].body[..], b"bin\0ary");
}

#[test]
fn captured_sessions_survive_every_split_and_round_trip() {
    for (name, version) in [
        ("stomppy_1_0.bin", Version::V1_0),
        ("stomppy_1_1.bin", Version::V1_1),
        ("stomppy_1_2.bin", Version::V1_2),
    ] {
        let data = fixture(name);
        for split in 0..data.len() {
            fuzzing::check(&data, split, &Limits::default(), version);
        }
    }
}

#[test]
fn partial_input_asks_for_more_and_keeps_the_buffer() {
    let data = b"SEND\ndestination:/queue/a\ncontent-length:3\n\na\0b\0";
    for n in 0..data.len() {
        let mut buf = BytesMut::from(&data[..n]);
        assert_eq!(
            decode(&mut buf, Version::V1_2, &Limits::default()),
            Ok(None)
        );
        assert_eq!(&buf[..], &data[..n]);
    }
    let f = one(data, Version::V1_2);
    assert_eq!(&f.body[..], b"a\0b");
}

#[test]
fn consumes_exactly_one_frame() {
    let mut buf = BytesMut::from(&b"BEGIN\ntransaction:t\n\n\0COMMIT\ntransaction:t\n\n\0"[..]);
    let first = decode(&mut buf, Version::V1_2, &Limits::default()).unwrap();
    assert!(matches!(first, Some(Item::Frame(f)) if f.command == Command::Begin));
    assert_eq!(&buf[..], b"COMMIT\ntransaction:t\n\n\0");
}

#[test]
fn body_without_content_length_ends_at_nul() {
    let f = one(b"SEND\ndestination:/queue/a\n\nhello\0", Version::V1_0);
    assert_eq!(&f.body[..], b"hello");
}

#[test]
fn heartbeat_eols_between_frames() {
    let got = items(b"\n\r\nSEND\ndestination:/q\n\nx\0\n\n", Version::V1_2);
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], Item::Heartbeat);
    assert_eq!(got[1], Item::Heartbeat);
    assert!(matches!(&got[2], Item::Frame(f) if f.command == Command::Send));
    assert_eq!(got[3], Item::Heartbeat);
    // A lone CR could start a CRLF heart-beat: wait for the next byte.
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &Limits::default()),
        Ok(None)
    );
}

#[test]
fn crlf_line_endings() {
    let f = one(
        b"SEND\r\ndestination:/queue/a\r\nx:1\r\n\r\nbody\0",
        Version::V1_2,
    );
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.header("destination"), Some("/queue/a"));
    assert_eq!(f.header("x"), Some("1"));
    assert_eq!(&f.body[..], b"body");
}

#[test]
fn repeated_headers_first_wins_all_kept() {
    let f = one(b"SEND\nfoo:first\nfoo:second\n\n\0", Version::V1_2);
    assert_eq!(f.header("foo"), Some("first"));
    assert_eq!(f.headers.len(), 2);
    assert_eq!(f.headers[1], ("foo".into(), "second".into()));
    // The first content-length decides the body.
    let f = one(
        b"SEND\ncontent-length:2\ncontent-length:9\n\nab\0",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"ab");
}

#[test]
fn escaping_per_version() {
    let raw = b"SEND\nk\\cey:a\\nb\\\\c\\cd\n\n\0";
    assert_eq!(
        one(raw, Version::V1_0).header("k\\cey"),
        Some("a\\nb\\\\c\\cd")
    );
    assert_eq!(one(raw, Version::V1_1).header("k:ey"), Some("a\nb\\c:d"));
    assert_eq!(one(raw, Version::V1_2).header("k:ey"), Some("a\nb\\c:d"));
    let cr = b"SEND\nk:a\\rb\n\n\0";
    assert_eq!(one(cr, Version::V1_2).header("k"), Some("a\rb"));
    assert_eq!(
        err(cr, Version::V1_1, &Limits::default()),
        Error::InvalidEscape
    );
    assert_eq!(one(cr, Version::V1_0).header("k"), Some("a\\rb"));
    for bad in [&b"SEND\nk:a\\tb\n\n\0"[..], b"SEND\nk:a\\\n\n\0"] {
        assert_eq!(
            err(bad, Version::V1_2, &Limits::default()),
            Error::InvalidEscape
        );
    }
}

#[test]
fn connect_and_connected_are_never_unescaped() {
    let f = one(b"CONNECT\nlogin:a\\cb\npasscode:p\\tq\n\n\0", Version::V1_2);
    assert_eq!(f.header("login"), Some("a\\cb"));
    assert_eq!(f.header("passcode"), Some("p\\tq"));
    let f = one(b"CONNECTED\nserver:x\\c1\n\n\0", Version::V1_2);
    assert_eq!(f.header("server"), Some("x\\c1"));
    let mut out = BytesMut::new();
    encode(
        &Frame::new(Command::Connected).with("server", "a\\b"),
        Version::V1_2,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..], b"CONNECTED\nserver:a\\b\n\n\0");
}

#[test]
fn limits_have_distinct_errors() {
    let tiny = Limits {
        frame_bytes_max: 64,
        header_count_max: 2,
        header_line_bytes_max: 24,
    };
    // A declared body over the limit is refused before it arrives.
    let declared = b"SEND\ncontent-length:1000\n\n";
    assert_eq!(
        err(declared, Version::V1_2, &tiny),
        Error::FrameTooLarge { max: 64 }
    );
    // Without content-length: as soon as 64 bytes hold no NUL.
    let mut open = b"SEND\n\n".to_vec();
    open.extend(std::iter::repeat_n(b'x', 58));
    let mut buf = BytesMut::from(&open[..63]);
    assert_eq!(decode(&mut buf, Version::V1_2, &tiny), Ok(None));
    assert_eq!(
        err(&open, Version::V1_2, &tiny),
        Error::FrameTooLarge { max: 64 }
    );
    // A frame of exactly the limit passes.
    let mut exact = b"SEND\n\n".to_vec();
    exact.extend(std::iter::repeat_n(b'x', 57));
    exact.push(0);
    assert_eq!(exact.len(), 64);
    assert_eq!(one_with(&exact, &tiny).body.len(), 57);
    assert_eq!(
        err(b"SEND\na:1\nb:2\nc:3\n\n\0", Version::V1_2, &tiny),
        Error::TooManyHeaders { max: 2 }
    );
    // Line length, even while the line is incomplete.
    assert_eq!(
        err(b"SEND\nabcdefghijkl:123456789012", Version::V1_2, &tiny),
        Error::LineTooLong { max: 24 }
    );
    assert_eq!(
        one_with(b"SEND\nabcdefghijk:123456789012\n\n\0", &tiny)
            .headers
            .len(),
        1
    );
}

fn one_with(data: &[u8], limits: &Limits) -> Frame {
    let mut buf = BytesMut::from(data);
    match decode(&mut buf, Version::V1_2, limits) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_frames() {
    let d = Limits::default();
    assert_eq!(err(b"FOO\n\n\0", Version::V1_2, &d), Error::UnknownCommand);
    assert_eq!(err(b"send\n\n\0", Version::V1_2, &d), Error::UnknownCommand);
    assert_eq!(
        err(b"SEND\nnocolon\n\n\0", Version::V1_2, &d),
        Error::MalformedHeader
    );
    assert_eq!(
        err(b"SEND\ncontent-length:x\n\n\0", Version::V1_2, &d),
        Error::InvalidContentLength
    );
    assert_eq!(
        err(b"SEND\ncontent-length:-1\n\n\0", Version::V1_2, &d),
        Error::InvalidContentLength
    );
    assert_eq!(
        err(b"SEND\ncontent-length:1\n\nab\0", Version::V1_2, &d),
        Error::BodyNotTerminated
    );
    assert_eq!(
        err(b"SEND\nk:\xff\n\n\0", Version::V1_2, &d),
        Error::InvalidUtf8
    );
}

#[test]
fn encoder_escapes_and_round_trips() {
    let frame = Frame::new(Command::Message)
        .with("destination", "/queue/a")
        .with("k:ey", "a\nb\\c:d\re")
        .with("content-length", "3")
        .with_body(&b"a\0b"[..]);
    let mut out = BytesMut::new();
    encode(&frame, Version::V1_2, &mut out).unwrap();
    assert_eq!(
        &out[..],
        &b"MESSAGE\ndestination:/queue/a\nk\\cey:a\\nb\\\\c\\cd\\re\ncontent-length:3\n\na\0b\0"[..]
    );
    assert_eq!(one(&out, Version::V1_2), frame);
    // 1.1 has no \r escape: a CR goes as it is.
    let mut out = BytesMut::new();
    encode(&frame, Version::V1_1, &mut out).unwrap();
    assert_eq!(one(&out, Version::V1_1), frame);
    // 1.0: no escaping at all, so no line break and no ':' in a name.
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&frame, Version::V1_0, &mut out),
        Err(Error::Unrepresentable)
    );
    assert!(out.is_empty());
    assert!(!representable(Command::Message, Version::V1_0, "a:b", "v"));
    assert!(representable(Command::Message, Version::V1_0, "ab", "v:w"));
    // The body must agree with content-length, and a NUL needs one.
    let no_len = Frame::new(Command::Message).with_body(&b"a\0"[..]);
    assert_eq!(
        encode(&no_len, Version::V1_2, &mut BytesMut::new()),
        Err(Error::Unrepresentable)
    );
}

/// Found by the fuzzer: a value ending in CR (the line ended CR CR LF) could not be written
/// back where CR is not escaped. The encoder now adds the CR the CRLF line end takes.
#[test]
fn value_ending_in_cr_round_trips() {
    for v in fuzzing::VERSIONS {
        let f = one(b"SEND\nn:/\r\r\r\nk:v\n\n\0", v);
        assert_eq!(f.header("n"), Some("/\r\r"), "{v:?}");
        let mut out = BytesMut::new();
        encode(&f, v, &mut out).unwrap();
        assert_eq!(one(&out, v), f, "{v:?}");
    }
    let connected = Frame::new(Command::Connected).with("server", "x\r");
    let mut out = BytesMut::new();
    encode(&connected, Version::V1_2, &mut out).unwrap();
    assert_eq!(&out[..], b"CONNECTED\nserver:x\r\r\n\n\0");
}

#[test]
fn every_command_round_trips() {
    for &c in Command::ALL {
        for v in fuzzing::VERSIONS {
            let frame = Frame::new(c).with("a", "b").with_body(&b"x"[..]);
            let mut out = BytesMut::new();
            encode(&frame, v, &mut out).unwrap();
            assert_eq!(one(&out, v), frame);
        }
    }
}
