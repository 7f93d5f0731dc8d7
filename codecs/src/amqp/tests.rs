use amq_protocol::protocol::{basic, channel, connection, exchange, queue};
use amq_protocol_types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};

use super::*;

const LIMITS: Limits = Limits {
    frame_bytes_max: 131_072,
};

fn enc(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out.to_vec()
}

fn dec_all(bytes: &[u8]) -> Result<Vec<Frame>, Error> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(f) = decode(&mut buf, &LIMITS)? {
        frames.push(f);
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(frames)
}

fn all_values_table() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("deep".into(), AMQPValue::LongLongInt(-1));
    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(8));
    t.insert("i16".into(), AMQPValue::ShortInt(-16));
    t.insert("u16".into(), AMQPValue::ShortUInt(16));
    t.insert("i32".into(), AMQPValue::LongInt(-32));
    t.insert("u32".into(), AMQPValue::LongUInt(32));
    t.insert("i64".into(), AMQPValue::LongLongInt(-64));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25));
    t.insert(
        "dec".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 314,
        }),
    );
    t.insert(
        "str".into(),
        AMQPValue::LongString(LongString::from("héllo")),
    );
    t.insert(
        "arr".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Void,
            AMQPValue::FieldTable(nested.clone()),
        ])),
    );
    t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("tbl".into(), AMQPValue::FieldTable(nested));
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 255])),
    );
    t.insert("void".into(), AMQPValue::Void);
    t
}

fn full_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("gzip".into())
        .with_headers(all_values_table())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr".into())
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("60000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into())
}

/// A few frames of each kind; also the seed corpus of the fuzz target.
pub(super) fn sample_frames() -> Vec<Frame> {
    let mut client_props = FieldTable::default();
    let mut caps = FieldTable::default();
    caps.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
    client_props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    client_props.insert("product".into(), AMQPValue::LongString("pika".into()));
    vec![
        Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
        Frame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_props,
                mechanism: "PLAIN".into(),
                response: LongString::from(&b"\0guest\0guest"[..]),
                locale: "en_US".into(),
            })),
        ),
        Frame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        ),
        Frame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        Frame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        Frame::Method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "ex".into(),
                kind: "topic".into(),
                durable: true,
                arguments: all_values_table(),
                ..Default::default()
            })),
        ),
        Frame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                durable: true,
                exclusive: true,
                nowait: true,
                ..Default::default()
            })),
        ),
        Frame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "ex".into(),
                routing_key: "a.b".into(),
                arguments: all_values_table(),
            })),
        ),
        Frame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                no_ack: true,
                arguments: all_values_table(),
                ..Default::default()
            })),
        ),
        Frame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "ex".into(),
                routing_key: "a.b".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        Frame::Header(
            1,
            ContentHeader {
                class_id: 60,
                body_size: 11,
                properties: full_properties(),
            },
        ),
        Frame::Body(1, Bytes::from_static(b"hello")),
        Frame::Body(1, Bytes::from_static(b" world")),
        Frame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 42,
                multiple: true,
            })),
        ),
        Frame::Heartbeat(0),
        Frame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
    ]
}

fn sample_stream() -> Vec<u8> {
    sample_frames().iter().flat_map(enc).collect()
}

#[test]
fn hand_built_frames_decode() {
    // channel.open on channel 1: class 20, method 10, reserved short string "".
    let open = [1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE];
    assert_eq!(
        dec_all(&open).unwrap(),
        vec![Frame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
        )]
    );
    // Heartbeat on channel 0.
    assert_eq!(
        dec_all(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).unwrap(),
        vec![Frame::Heartbeat(0)]
    );
    // A body frame of 3 bytes on channel 7.
    assert_eq!(
        dec_all(&[3, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE]).unwrap(),
        vec![Frame::Body(7, Bytes::from_static(b"abc"))]
    );
    // basic.qos prefetch 10, global: class 60, method 10, size 0u32, count 10u16, bits 1.
    let qos = [
        1, 0, 2, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 1, 0xCE,
    ];
    assert_eq!(
        dec_all(&qos).unwrap(),
        vec![Frame::Method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 10,
                global: true
            }))
        )]
    );
    // A content header with no properties: class 60, weight 0, size 5, flags 0.
    let header = [
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0xCE,
    ];
    assert_eq!(
        dec_all(&header).unwrap(),
        vec![Frame::Header(
            1,
            ContentHeader {
                class_id: 60,
                body_size: 5,
                properties: BasicProperties::default()
            }
        )]
    );
    // The protocol header.
    assert_eq!(
        dec_all(b"AMQP\x00\x00\x09\x01").unwrap(),
        vec![Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1)]
    );
}

#[test]
fn encode_matches_hand_built_bytes() {
    assert_eq!(enc(&Frame::Heartbeat(0)), [8, 0, 0, 0, 0, 0, 0, 0xCE]);
    assert_eq!(
        enc(&Frame::Body(7, Bytes::from_static(b"abc"))),
        [3, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE]
    );
    assert_eq!(
        enc(&Frame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
        )),
        [1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE]
    );
}

#[test]
fn round_trip_every_sample() {
    for frame in sample_frames() {
        let bytes = enc(&frame);
        assert_eq!(dec_all(&bytes).unwrap(), vec![frame.clone()], "{frame:?}");
    }
}

#[test]
fn body_is_split_without_copy() {
    let bytes = enc(&Frame::Body(1, Bytes::from_static(b"payload")));
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Body(_, body)) = decode(&mut buf, &LIMITS).unwrap() else {
        panic!("not a body")
    };
    // The body points into the read buffer's allocation, 7 bytes in.
    assert_eq!(body.as_ptr() as usize, base + 7);
}

#[test]
fn every_split_point_gives_the_same_frames() {
    let stream = sample_stream();
    let expected = dec_all(&stream).unwrap();
    for at in 0..=stream.len() {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&stream[..at], &stream[at..]] {
            buf.extend_from_slice(part);
            while let Some(f) = decode(&mut buf, &LIMITS).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, expected, "split at {at}");
    }
}

#[test]
fn byte_by_byte_delivery() {
    let stream = sample_stream();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = decode(&mut buf, &LIMITS).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, sample_frames());
}

#[test]
fn truncated_frames_ask_for_more_and_leave_the_buffer_alone() {
    for frame in sample_frames() {
        let bytes = enc(&frame);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode(&mut buf, &LIMITS),
                Ok(None),
                "{frame:?} cut at {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let limits = Limits {
        frame_bytes_max: 4096,
    };
    // Only the 7-byte header of a 1 MiB body frame has arrived.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
    assert_eq!(
        decode(&mut buf, &limits),
        Err(Error::FrameTooLarge {
            frame_type: 3,
            channel: 1,
            size: 0x10_0000,
            max: 4096
        })
    );
    assert_eq!(
        Error::FrameTooLarge {
            frame_type: 3,
            channel: 1,
            size: 0,
            max: 0
        }
        .reply_code(),
        501
    );
    // A payload of exactly frame_max passes (RabbitMQ's fudge), one more does not.
    let mut ok = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x10, 0][..]);
    assert_eq!(decode(&mut ok, &limits), Ok(None));
    assert!(
        ok.capacity() >= FRAME_OVERHEAD + 4096,
        "reserved for the whole frame"
    );
    let mut over = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x10, 1][..]);
    assert!(matches!(
        decode(&mut over, &limits),
        Err(Error::FrameTooLarge { .. })
    ));
}

#[test]
fn huge_declared_size_without_limit_reserves_little() {
    // 3.4 GB declared, no limit (found by the fuzzer as an out-of-memory).
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0xCE, 0xFA, 0xCE, 0xFA][..]);
    assert_eq!(decode(&mut buf, &Limits { frame_bytes_max: 0 }), Ok(None));
    assert!(buf.capacity() <= (1 << 20) + 64);
}

#[test]
fn bad_frame_end() {
    let mut bytes = enc(&Frame::Body(1, Bytes::from_static(b"abc")));
    *bytes.last_mut().unwrap() = 0;
    let err = dec_all(&bytes).unwrap_err();
    assert_eq!(
        err,
        Error::BadFrameEnd {
            frame_type: 3,
            channel: 1,
            found: 0
        }
    );
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn unknown_frame_type() {
    let err = dec_all(&[9, 0, 0, 0, 0, 0, 0, 0xCE]).unwrap_err();
    assert_eq!(
        err,
        Error::UnknownFrameType {
            frame_type: 9,
            channel: 0
        }
    );
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn heartbeat_with_payload() {
    let err = dec_all(&[8, 0, 0, 0, 0, 0, 1, 0, 0xCE]).unwrap_err();
    assert_eq!(
        err,
        Error::BadHeartbeat {
            channel: 0,
            size: 1
        }
    );
}

#[test]
fn unknown_class_and_method() {
    // class 70 does not exist.
    let err = dec_all(&[1, 0, 1, 0, 0, 0, 4, 0, 70, 0, 10, 0xCE]).unwrap_err();
    assert_eq!(
        err,
        Error::UnknownMethod {
            channel: 1,
            class_id: 70,
            method_id: 10
        }
    );
    assert_eq!(err.reply_code(), 540);
    assert_eq!(err.class_method(), (70, 10));
    // basic (60) has no method 99.
    let err = dec_all(&[1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 99, 0xCE]).unwrap_err();
    assert_eq!(err.reply_code(), 540);
}

#[test]
fn malformed_methods() {
    // Too short for class and method ids.
    let err = dec_all(&[1, 0, 1, 0, 0, 0, 2, 0, 20, 0xCE]).unwrap_err();
    assert!(matches!(err, Error::MalformedMethod { .. }));
    // channel.open with a trailing byte.
    let err = dec_all(&[1, 0, 1, 0, 0, 0, 6, 0, 20, 0, 10, 0, 7, 0xCE]).unwrap_err();
    assert_eq!(
        err,
        Error::MalformedMethod {
            channel: 1,
            class_id: 20,
            method_id: 10
        }
    );
    assert_eq!(err.reply_code(), 501);
    // channel.open whose reserved short string runs past the payload.
    let err = dec_all(&[1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 9, 0xCE]).unwrap_err();
    assert!(matches!(err, Error::MalformedMethod { .. }));
    // A content header that is too short.
    let err = dec_all(&[2, 0, 1, 0, 0, 0, 2, 0, 60, 0xCE]).unwrap_err();
    assert_eq!(err, Error::MalformedHeader { channel: 1 });
}

/// A queue.declare whose arguments nest `depth` arrays, built by hand.
fn deeply_nested_declare(depth: usize) -> Vec<u8> {
    // Innermost: an empty array. Each level wraps it: 'A' + u32 length + content.
    let mut value = vec![b'A', 0, 0, 0, 0];
    for _ in 1..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut table = vec![1, b'k'];
    table.extend_from_slice(&value);
    let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    let mut frame = vec![1, 0, 1];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

#[test]
fn nesting_is_bounded_without_recursion() {
    // Within the bound: decodes.
    let ok = deeply_nested_declare(NESTING_MAX - 1);
    assert!(matches!(dec_all(&ok).unwrap()[..], [Frame::Method(1, _)]));
    // Just over: refused.
    let over = deeply_nested_declare(NESTING_MAX);
    assert!(matches!(
        dec_all(&over).unwrap_err(),
        Error::MalformedMethod {
            class_id: 50,
            method_id: 10,
            ..
        }
    ));
    // Tens of thousands of levels in one frame: refused, and the stack survives.
    let huge = deeply_nested_declare(25_000);
    let limits = Limits { frame_bytes_max: 0 };
    let mut buf = BytesMut::from(&huge[..]);
    assert!(decode(&mut buf, &limits).is_err());
}

#[test]
fn nested_headers_in_content_header_are_bounded() {
    let mut value = vec![b'F', 0, 0, 0, 0];
    for _ in 0..100 {
        let mut entry = vec![1, b'k'];
        entry.extend_from_slice(&value);
        let mut outer = vec![b'F'];
        outer.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        outer.extend_from_slice(&entry);
        value = outer;
    }
    // headers property only (bit 13): the table is the value without its 'F' tag.
    let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
    payload.extend_from_slice(&value[1..]);
    let mut frame = vec![2, 0, 1];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    assert_eq!(
        dec_all(&frame).unwrap_err(),
        Error::MalformedHeader { channel: 1 }
    );
}

#[test]
fn protocol_header_is_taken_as_sent() {
    let mut buf = BytesMut::from(&b"AMQP\x00\x00\x08\x00rest"[..]);
    let Some(Frame::ProtocolHeader(h)) = decode(&mut buf, &LIMITS).unwrap() else {
        panic!()
    };
    assert!(!h.is_supported());
    assert_eq!(&buf[..], b"rest");
    let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert_eq!(
        decode_protocol_header(&mut http),
        Some(ProtocolHeader(*b"GET / HT"))
    );
    assert!(ProtocolHeader::AMQP_0_9_1.is_supported());
    assert!(ProtocolHeader::AMQP_0_9.is_supported());
}

#[test]
fn encode_content_splits_bodies_by_frame_max() {
    let body = vec![7u8; 10_000];
    let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "".into(),
        routing_key: "q".into(),
    }));
    let mut out = BytesMut::new();
    encode_content(3, &method, &full_properties(), &body, 4096, &mut out);
    let frames = dec_all(&out).unwrap();
    assert_eq!(frames.len(), 2 + 3, "method, header, 3 body frames");
    assert_eq!(frames[0], Frame::Method(3, method));
    let Frame::Header(3, h) = &frames[1] else {
        panic!()
    };
    assert_eq!(h.body_size, 10_000);
    assert_eq!(h.properties, full_properties());
    let mut joined = Vec::new();
    for f in &frames[2..] {
        let Frame::Body(3, b) = f else { panic!() };
        assert!(b.len() + FRAME_OVERHEAD <= 4096);
        joined.extend_from_slice(b);
    }
    assert_eq!(joined, body);
    // An empty body sends no body frame.
    let mut out = BytesMut::new();
    encode_content(
        3,
        &frames[0].clone().method(),
        &BasicProperties::default(),
        &[],
        4096,
        &mut out,
    );
    assert_eq!(dec_all(&out).unwrap().len(), 2);
}

impl Frame {
    fn method(self) -> AMQPClass {
        match self {
            Frame::Method(_, m) => m,
            _ => panic!("not a method"),
        }
    }
}

#[test]
fn error_metadata() {
    let e = Error::MalformedMethod {
        channel: 3,
        class_id: 50,
        method_id: 10,
    };
    assert_eq!(e.channel(), 3);
    assert_eq!(e.class_method(), (50, 10));
    assert_eq!(e.to_string(), "cannot decode method 50/10");
    assert_eq!(Error::MalformedHeader { channel: 1 }.class_method(), (0, 0));
}

#[test]
fn short_string_type_is_not_on_the_wire() {
    // 's' is a short int in RabbitMQ's dialect, which amq-protocol follows.
    let mut t = FieldTable::default();
    t.insert("k".into(), AMQPValue::ShortInt(-2));
    let f = Frame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            arguments: t,
            ..Default::default()
        })),
    );
    let bytes = enc(&f);
    assert!(bytes.windows(3).any(|w| w == [b's', 0xFF, 0xFE]));
    assert_eq!(dec_all(&bytes).unwrap(), vec![f]);
    let _ = ShortString::from("unused");
}

/// Pseudo-random garbage, prefixed by real frames or not: decode never panics and keeps the
/// fuzz property. (The fuzz target explores this far more; this keeps the check in `cargo test`.)
#[test]
fn garbage_keeps_the_decode_property() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let stream = sample_stream();
    for i in 0..3000 {
        let len = (next() % 300) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // Start from valid frames and flip a byte, so deeper parsers are reached.
            data = stream.clone();
            let at = (next() as usize) % data.len();
            data[at] ^= (next() as u8) | 1;
        } else if i % 3 == 1 && !data.is_empty() {
            // A plausible frame header in front of the garbage.
            data[0] = [1, 2, 3, 8][(next() % 4) as usize];
        }
        fuzzing::check(&data, next() as usize, [0, 4096, 131_072][i % 3]);
    }
}

#[test]
fn seed_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/amqp_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus present") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        fuzzing::check_input(&data);
        // And every split point of the stream, under each limit.
        let stream = data.get(2..).unwrap_or_default();
        for split in 0..=stream.len() {
            for limit in [0, 4096, 131_072] {
                fuzzing::check(stream, split, limit);
            }
        }
        n += 1;
    }
    assert!(n >= 3, "seed corpus has {n} files");
}

/// Writes the seed corpus from [`sample_frames`], in the fuzz target's input form (two control
/// bytes: split 0, limit 128 KiB). Run by hand when the samples change:
/// `cargo test -p codecs -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/amqp_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let frames = sample_frames();
    let names = [
        "protocol_header",
        "start_ok",
        "tune_ok",
        "connection_open",
        "channel_open",
        "exchange_declare",
        "queue_declare",
        "queue_unbind",
        "basic_consume",
        "basic_publish",
        "content_header",
        "body_1",
        "body_2",
        "basic_ack",
        "heartbeat",
        "channel_close",
    ];
    for (name, frame) in names.iter().zip(&frames) {
        let mut data = vec![0, 2];
        data.extend(enc(frame));
        std::fs::write(dir.join(format!("{name}.bin")), data).unwrap();
    }
    let mut data = vec![0, 2];
    data.extend(sample_stream());
    std::fs::write(dir.join("session.bin"), data).unwrap();
}
