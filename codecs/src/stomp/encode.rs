//! The encoder: a frame to its wire form in a version, escaping headers as that version says.

use bytes::{BufMut, BytesMut};

use super::{Command, Error, Frame, Version};

/// Whether header `name: value` can be written in a `command` frame of `version`: always when
/// the version escapes (1.1, 1.2); without escaping (1.0, CONNECT/CONNECTED) no line break
/// anywhere and no `:` in the name.
pub fn representable(command: Command, version: Version, name: &str, value: &str) -> bool {
    let escaped = command.escapes_headers() && version >= Version::V1_1;
    escaped || (!name.contains(['\n', ':']) && !value.contains('\n'))
}

/// Appends `frame` to `out`. On error `out` is unchanged.
///
/// The caller writes `content-length` (a MESSAGE body may hold NUL): the first content-length
/// header must equal the body's length, and a body holding NUL needs one.
pub(super) fn encode(frame: &Frame, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    if frame
        .headers
        .iter()
        .any(|(n, v)| !representable(frame.command, version, n, v))
    {
        return Err(Error::Unrepresentable);
    }
    match frame.header("content-length") {
        Some(v) if v.parse::<usize>().ok() != Some(frame.body.len()) => {
            return Err(Error::Unrepresentable)
        }
        None if frame.body.contains(&0) => return Err(Error::Unrepresentable),
        _ => {}
    }
    let escaped = frame.command.escapes_headers() && version >= Version::V1_1;
    out.reserve(frame.body.len() + 64);
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        put(out, name, escaped, version);
        out.put_u8(b':');
        put(out, value, escaped, version);
        // The decoder reads one CR before the LF as part of a CRLF line end: a value that
        // ends in a CR it cannot escape gets one more, which that CRLF then takes.
        if value.ends_with('\r') && !(escaped && version >= Version::V1_2) {
            out.put_u8(b'\r');
        }
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
    Ok(())
}

fn put(out: &mut BytesMut, s: &str, escaped: bool, version: Version) {
    if !escaped || !s.contains(['\\', '\n', ':', '\r']) {
        out.put_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.put_slice(b"\\\\"),
            '\n' => out.put_slice(b"\\n"),
            ':' => out.put_slice(b"\\c"),
            '\r' if version >= Version::V1_2 => out.put_slice(b"\\r"),
            c => {
                let mut b = [0; 4];
                out.put_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}
