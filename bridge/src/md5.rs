//! The MD5 digests SQS returns with SendMessage and ReceiveMessage. SDKs recompute them and fail
//! the call on a mismatch, so they must match AWS bit for bit.
//!
//! Attributes are digested as the SQS developer guide describes: sorted by name, each as
//! `len(name) name len(type) type transport value-len value` with 4-byte big-endian lengths and
//! a transport byte (1 = string value, 2 = binary value).

use md5::{Digest, Md5};

/// One message attribute value as both wire protocols carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// `String` and `Number` (and their `.custom` suffixes): the value is text.
    String(String),
    /// `Binary` (and `Binary.custom`): the value is bytes.
    Binary(Vec<u8>),
}

/// Hex MD5 of the message body, as in `MD5OfMessageBody` / `MD5OfBody`.
pub fn md5_of_body(body: &str) -> String {
    hex::encode(Md5::digest(body.as_bytes()))
}

/// Hex MD5 of message (or system) attributes, `(name, data type, value)`; `None` when there
/// are none, because AWS then leaves `MD5OfMessageAttributes` out.
pub fn md5_of_attributes<'a, I>(attrs: I) -> Option<String>
where
    I: IntoIterator<Item = (&'a str, &'a str, &'a AttrValue)>,
{
    let mut sorted: Vec<_> = attrs.into_iter().collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = Md5::new();
    fn field(h: &mut Md5, bytes: &[u8]) {
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    }
    for (name, data_type, value) in sorted {
        field(&mut h, name.as_bytes());
        field(&mut h, data_type.as_bytes());
        match value {
            AttrValue::String(s) => {
                h.update([1u8]);
                field(&mut h, s.as_bytes());
            }
            AttrValue::Binary(b) => {
                h.update([2u8]);
                field(&mut h, b);
            }
        }
    }
    Some(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // botocore does not check these digests (the Java and .NET SDKs do), so the attribute
    // fixtures come from an independent Python implementation of the developer guide's
    // algorithm (struct.pack(">I") lengths, transport byte), and the body one from the real AWS
    // response quoted in awscli's `sqs send-message` example (`51b0a325...39163aa0`).
    #[test]
    fn body_digest() {
        assert_eq!(
            md5_of_body("Information about the largest city in Any Region."),
            "51b0a3256d59467f973009b739163aa0"
        );
        assert_eq!(md5_of_body("hello"), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(md5_of_body(""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn no_attributes_no_digest() {
        assert_eq!(md5_of_attributes([]), None);
    }

    #[test]
    fn attribute_digest_matches_botocore() {
        let s = AttrValue::String("value".into());
        let n = AttrValue::String("42".into());
        let b = AttrValue::Binary(vec![0, 1, 2, 255]);
        // Out of order on purpose: the digest sorts by name.
        let got = md5_of_attributes([
            ("b", "Number", &n),
            ("a", "String", &s),
            ("c", "Binary.gz", &b),
        ]);
        assert_eq!(got.as_deref(), Some(FIXTURE_ABC));
        let one = md5_of_attributes([("a", "String", &s)]);
        assert_eq!(one.as_deref(), Some(FIXTURE_A));
    }

    const FIXTURE_ABC: &str = "539a1dded6f28777f3b53c97791f7eda";
    const FIXTURE_A: &str = "b024f2757cb3ee7449dd7bf2d2801036";
}
