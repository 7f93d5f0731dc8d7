//! The decoder: one frame (or one heart-beat EOL) from the front of a streaming buffer.
//!
//! Lines and bodies are cut with nom's streaming parsers over a *window* of the buffer that
//! ends where the next limit would be exceeded. "Incomplete" inside a window cut by a limit is
//! that limit's error; inside a window cut by the end of the data it means "need more". So an
//! error is decided by the bytes up to the point where it became certain, never by how the
//! stream was split into reads.

use bytes::{Buf, BytesMut};
use nom::bytes::{complete, streaming};
use nom::Parser;

use super::{Command, Error, Frame, Item, Limits, Version};

type NomError<'a> = nom::error::Error<&'a [u8]>;

/// The most [`decode`] reserves ahead of the bytes received for a declared body.
const RESERVE_MAX: usize = 1 << 20;

/// Where a frame's parts lie in the buffer, once it is complete.
struct Parsed {
    command: Command,
    headers: Vec<(String, String)>,
    body_start: usize,
    body_len: usize,
    /// Bytes of the frame, its NUL included.
    total: usize,
}

enum Step {
    Done(Parsed),
    /// Incomplete; `reserve` is how many more bytes a declared body still needs.
    More {
        reserve: usize,
    },
}

/// Decodes one item from the front of `buf` (see [`super::decode`]).
pub(super) fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Item>, Error> {
    match (buf.first(), buf.get(1)) {
        (None, _) | (Some(b'\r'), None) => return Ok(None),
        (Some(b'\n'), _) => {
            buf.advance(1);
            return Ok(Some(Item::Heartbeat));
        }
        (Some(b'\r'), Some(b'\n')) => {
            buf.advance(2);
            return Ok(Some(Item::Heartbeat));
        }
        _ => {}
    }
    match parse(buf, version, limits)? {
        Step::More { reserve } => {
            buf.reserve(reserve.min(RESERVE_MAX));
            Ok(None)
        }
        Step::Done(p) => {
            let whole = buf.split_to(p.total).freeze();
            Ok(Some(Item::Frame(Frame {
                command: p.command,
                headers: p.headers,
                body: whole.slice(p.body_start..p.body_start + p.body_len),
            })))
        }
    }
}

fn cap(limit: usize) -> usize {
    if limit == 0 {
        usize::MAX
    } else {
        limit
    }
}

/// The line starting at `pos` (without its LF and a CR before it), and where the next begins.
fn line<'a>(
    buf: &'a [u8],
    pos: usize,
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, Error> {
    let line_end = pos
        .saturating_add(cap(limits.header_line_bytes_max))
        .saturating_add(1);
    let frame_end = cap(limits.frame_bytes_max);
    let end = buf.len().min(line_end).min(frame_end);
    let window = &buf[pos.min(end)..end];
    let r: nom::IResult<&[u8], &[u8], NomError> = (
        streaming::take_till(|b| b == b'\n'),
        streaming::tag(&b"\n"[..]),
    )
        .map(|(l, _)| l)
        .parse(window);
    match r {
        Ok((rest, l)) => {
            let next = end - rest.len();
            Ok(Some((l.strip_suffix(b"\r").unwrap_or(l), next)))
        }
        Err(nom::Err::Incomplete(_)) if end == buf.len() && end < line_end.min(frame_end) => {
            Ok(None)
        }
        Err(_) if line_end <= frame_end => Err(Error::LineTooLong {
            max: limits.header_line_bytes_max,
        }),
        Err(_) => Err(Error::FrameTooLarge {
            max: limits.frame_bytes_max,
        }),
    }
}

fn parse(buf: &[u8], version: Version, limits: &Limits) -> Result<Step, Error> {
    const MORE: Step = Step::More { reserve: 0 };
    let Some((cmd, mut pos)) = line(buf, 0, limits)? else {
        return Ok(MORE);
    };
    let command = Command::parse(cmd).ok_or(Error::UnknownCommand)?;
    let unescape = command.escapes_headers() && version >= Version::V1_1;
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    loop {
        let Some((l, next)) = line(buf, pos, limits)? else {
            return Ok(MORE);
        };
        pos = next;
        if l.is_empty() {
            break;
        }
        if limits.header_count_max != 0 && headers.len() >= limits.header_count_max {
            return Err(Error::TooManyHeaders {
                max: limits.header_count_max,
            });
        }
        let (name, value) = header(l, unescape, version)?;
        if name == "content-length" && !headers.iter().any(|(n, _)| n == "content-length") {
            content_length = Some(parse_length(&value)?);
        }
        headers.push((name, value));
    }
    let frame_end = cap(limits.frame_bytes_max);
    let body_start = pos;
    let window_end = buf.len().min(frame_end);
    let window = &buf[body_start.min(window_end)..window_end];
    let body_len = match content_length {
        Some(n) => {
            let end = body_start.saturating_add(n).saturating_add(1);
            if end > frame_end {
                return Err(Error::FrameTooLarge {
                    max: limits.frame_bytes_max,
                });
            }
            let r: nom::IResult<&[u8], (&[u8], u8), NomError> =
                (streaming::take(n), nom::number::streaming::u8).parse(window);
            match r {
                Ok((_, (_, 0))) => n,
                Ok(_) => return Err(Error::BodyNotTerminated),
                Err(_) => {
                    return Ok(Step::More {
                        reserve: end - buf.len(),
                    })
                }
            }
        }
        None => {
            let r: nom::IResult<&[u8], &[u8], NomError> =
                streaming::take_till(|b| b == 0).parse(window);
            match r {
                Ok((_, body)) => body.len(),
                Err(_) if window_end == buf.len() && buf.len() < frame_end => return Ok(MORE),
                Err(_) => {
                    return Err(Error::FrameTooLarge {
                        max: limits.frame_bytes_max,
                    })
                }
            }
        }
    };
    Ok(Step::Done(Parsed {
        command,
        headers,
        body_start,
        body_len,
        total: body_start + body_len + 1,
    }))
}

/// `name:value`, split at the first `:` (an escaped colon is `\c`, so never the separator).
fn header(l: &[u8], unescape: bool, version: Version) -> Result<(String, String), Error> {
    let r: nom::IResult<&[u8], (&[u8], &[u8]), NomError> = (
        complete::take_till(|b| b == b':'),
        complete::tag(&b":"[..]),
        nom::combinator::rest,
    )
        .map(|(n, _, v)| (n, v))
        .parse(l);
    let (_, (name, value)) = r.map_err(|_| Error::MalformedHeader)?;
    let text = |b: &[u8]| -> Result<String, Error> {
        let s = std::str::from_utf8(b).map_err(|_| Error::InvalidUtf8)?;
        if unescape {
            unescape_value(s, version)
        } else {
            Ok(s.to_string())
        }
    };
    Ok((text(name)?, text(value)?))
}

/// STOMP 1.1 `\n \c \\`, 1.2 also `\r`; anything else after `\` is a fatal error.
fn unescape_value(s: &str, version: Version) -> Result<String, Error> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('c') => ':',
            Some('\\') => '\\',
            Some('r') if version >= Version::V1_2 => '\r',
            _ => return Err(Error::InvalidEscape),
        });
    }
    Ok(out)
}

/// Decimal digits only (what every client sends), no sign, no spaces.
fn parse_length(v: &str) -> Result<usize, Error> {
    let r: nom::IResult<&str, &str, nom::error::Error<&str>> =
        nom::combinator::all_consuming(nom::character::complete::digit1).parse(v);
    let (_, digits) = r.map_err(|_| Error::InvalidContentLength)?;
    digits.parse().map_err(|_| Error::InvalidContentLength)
}
