//! Bounds the nesting of field tables and arrays before amq-protocol parses them.
//!
//! amq-protocol parses nested tables recursively; a 128 KiB frame can nest some 25,000 levels
//! (5 bytes each), enough to overflow a task's stack, which aborts the whole process. This walker
//! follows the same grammar without recursion and says whether the nesting stays within a
//! bound. It checks nothing else: on malformed bytes it answers "within" and leaves the error to
//! the real parser, which fails at the same spot or earlier, before recursing deeper than the
//! walker saw.

/// A cursor over a payload; every read is checked.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.rest = self.rest.get(n..)?;
        Some(())
    }
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let v = u16::from_be_bytes(self.rest.get(..2)?.try_into().ok()?);
        self.skip(2)?;
        Some(v)
    }
    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_be_bytes(self.rest.get(..4)?.try_into().ok()?);
        self.skip(4)?;
        Some(v)
    }
    fn short_str(&mut self) -> Option<()> {
        let n = self.u8()? as usize;
        self.skip(n)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.rest.get(..n)?, self.rest.get(n..)?);
        self.rest = rest;
        Some(head)
    }
}

/// Whether a method payload (class id and method id included) nests its field tables within
/// `max` levels. Methods without tables always are.
pub(super) fn method_within(class_id: u16, method_id: u16, payload: &[u8], max: usize) -> bool {
    let mut c = Cursor { rest: payload };
    let located = (|| -> Option<()> {
        c.skip(4)?; // class id, method id
        match (class_id, method_id) {
            // connection.start: version major, minor, then server-properties.
            (10, 10) => c.skip(2),
            // connection.start-ok: client-properties first.
            (10, 11) => Some(()),
            // exchange.declare: reserved, exchange, type, bits.
            (40, 10) => {
                c.skip(2)?;
                c.short_str()?;
                c.short_str()?;
                c.skip(1)
            }
            // exchange.bind/unbind: reserved, destination, source, routing key, bits.
            (40, 30) | (40, 40) => {
                c.skip(2)?;
                c.short_str()?;
                c.short_str()?;
                c.short_str()?;
                c.skip(1)
            }
            // queue.declare: reserved, queue, bits.
            (50, 10) => {
                c.skip(2)?;
                c.short_str()?;
                c.skip(1)
            }
            // queue.bind: reserved, queue, exchange, routing key, bits.
            (50, 20) => {
                c.skip(2)?;
                c.short_str()?;
                c.short_str()?;
                c.short_str()?;
                c.skip(1)
            }
            // queue.unbind: reserved, queue, exchange, routing key (no bits).
            (50, 50) => {
                c.skip(2)?;
                c.short_str()?;
                c.short_str()?;
                c.short_str()
            }
            // basic.consume: reserved, queue, consumer tag, bits.
            (60, 20) => {
                c.skip(2)?;
                c.short_str()?;
                c.short_str()?;
                c.skip(1)
            }
            _ => None,
        }
    })();
    match located {
        Some(()) => table_within(c.rest, max),
        None => true,
    }
}

/// Whether a content-header payload nests its `headers` property within `max` levels.
pub(super) fn header_within(payload: &[u8], max: usize) -> bool {
    let mut c = Cursor { rest: payload };
    let located = (|| -> Option<bool> {
        c.skip(12)?; // class id, weight, body size
        let flags = c.u16()?;
        if flags & (1 << 15) != 0 {
            c.short_str()?; // content-type
        }
        if flags & (1 << 14) != 0 {
            c.short_str()?; // content-encoding
        }
        Some(flags & (1 << 13) != 0)
    })();
    match located {
        Some(true) => table_within(c.rest, max),
        _ => true,
    }
}

/// One open container on the explicit stack: the bytes left in it and whether entries carry a
/// key (table) or not (array).
struct Open<'a> {
    rest: &'a [u8],
    keyed: bool,
}

/// Walks the field table at the start of `bytes` iteratively.
fn table_within(bytes: &[u8], max: usize) -> bool {
    let mut outer = Cursor { rest: bytes };
    let Some(len) = outer.u32() else { return true };
    let Some(body) = outer.take(len as usize) else {
        return true;
    };
    let mut stack = vec![Open {
        rest: body,
        keyed: true,
    }];
    while let Some(top) = stack.last_mut() {
        if top.rest.is_empty() {
            stack.pop();
            continue;
        }
        let mut c = Cursor { rest: top.rest };
        if top.keyed && c.short_str().is_none() {
            return true;
        }
        let Some(kind) = c.u8() else { return true };
        let fixed = match kind {
            b't' | b'b' | b'B' => Some(1),
            b's' | b'u' | b'U' => Some(2),
            b'I' | b'i' | b'f' => Some(4),
            b'l' | b'L' | b'd' | b'T' => Some(8),
            b'D' => Some(5),
            b'V' => Some(0),
            _ => None,
        };
        if let Some(n) = fixed {
            if c.skip(n).is_none() {
                return true;
            }
            top.rest = c.rest;
            continue;
        }
        let Some(n) = c.u32() else { return true };
        let Some(inner) = c.take(n as usize) else {
            return true;
        };
        top.rest = c.rest;
        match kind {
            b'S' | b'x' => {}
            b'A' | b'F' => {
                if stack.len() >= max {
                    return false;
                }
                stack.push(Open {
                    rest: inner,
                    keyed: kind == b'F',
                });
            }
            // An unknown type: amq-protocol refuses it where it stands.
            _ => return true,
        }
    }
    true
}
