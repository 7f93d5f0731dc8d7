//! The cloud APIs' surface (DESIGN.md): the SQS and SNS wire protocols, SigV4 verification, the MD5
//! digests SDKs check and AWS's error shapes. Bytes and `http` types in, typed requests out, and
//! back; the broker implements the backend traits. No sockets, no runtime, no state.
//!
//! Layout:
//! - [`error`]: one AWS error (code, status, fault) rendered as JSON 1.0 or Query XML.
//! - [`sigv4`]: Signature Version 4 verification (Authorization header and presigned URLs).
//! - [`md5`]: MD5OfMessageBody / MD5OfMessageAttributes / MD5OfMessageSystemAttributes.
//! - [`sqs`]: SQS requests and responses for both wire protocols, attribute validation, and the
//!   [`sqs::SqsBackend`] trait.
//! - [`sns`]: SNS requests (Query protocol) and responses, the notification envelope, filter
//!   policies, message signatures, and the [`sns::SnsBackend`] trait.
//! - [`sts`]: GetCallerIdentity, which SDK tooling calls to check credentials.

pub mod error;
/// The fuzz target's property (bridge/fuzz), shared with the seed replay test.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod md5;
pub mod sigv4;
pub mod sns;
pub mod sqs;
pub mod sts;

pub use error::{AwsError, Fault};
