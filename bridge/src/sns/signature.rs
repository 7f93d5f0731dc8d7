//! SNS message signatures: the string AWS signs for each message type, RSA signing with
//! SignatureVersion 1 (SHA1withRSA) or 2 (SHA256withRSA), and the broker's signing key with a
//! self-signed certificate for the SigningCertURL.
//!
//! API:
//! - [`string_to_sign`]`(&`[`SignedFields`]`)`: the `Key\nvalue\n` lines in AWS's fixed order.
//!   Notification: Message, MessageId, Subject (only when present), Timestamp, TopicArn, Type.
//!   SubscriptionConfirmation and UnsubscribeConfirmation: Message, MessageId, SubscribeURL,
//!   Timestamp, Token, TopicArn, Type.
//! - [`SigningKey::generate`] makes a 2048-bit RSA key and a self-signed certificate for it;
//!   the caller persists [`SigningKey::key_pem`] and [`SigningKey::certificate_pem`] and
//!   reloads them with [`SigningKey::from_pem`], so the certificate verifiers fetched stays valid
//!   across restarts.
//! - [`SigningKey::sign`] gives the base64 `Signature`; [`sign_envelope`] fills `SignatureVersion`
//!   and `Signature` into a JSON envelope built by the caller (the same envelope goes to SQS
//!   and HTTP subscribers); [`verify_envelope`] checks one against a certificate, as a
//!   subscriber does.
//!
//! Nothing here does I/O: keys and certificates come and go as PEM strings.

use std::fmt;

use base64::Engine;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use serde_json::{Map, Value};
use sha1::Sha1;

/// The three kinds of message SNS signs, by their `Type` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Notification => "Notification",
            MessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            MessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    pub fn parse(value: &str) -> Option<MessageType> {
        match value {
            "Notification" => Some(MessageType::Notification),
            "SubscriptionConfirmation" => Some(MessageType::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Some(MessageType::UnsubscribeConfirmation),
            _ => None,
        }
    }
}

/// A topic's `SignatureVersion` attribute: `1` (the default) or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureVersion {
    /// SHA1withRSA.
    #[default]
    V1,
    /// SHA256withRSA.
    V2,
}

impl SignatureVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureVersion::V1 => "1",
            SignatureVersion::V2 => "2",
        }
    }

    pub fn parse(value: &str) -> Option<SignatureVersion> {
        match value {
            "1" => Some(SignatureVersion::V1),
            "2" => Some(SignatureVersion::V2),
            _ => None,
        }
    }
}

/// The fields a signature covers. `subject` counts for notifications only; `subscribe_url` and
/// `token` for the two confirmations only (AWS signs an empty value if one is missing there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedFields<'a> {
    pub message_type: MessageType,
    pub message: &'a str,
    pub message_id: &'a str,
    pub subject: Option<&'a str>,
    pub subscribe_url: Option<&'a str>,
    pub token: Option<&'a str>,
    /// ISO 8601 with milliseconds, as in the envelope (`2026-11-26T12:00:00.000Z`).
    pub timestamp: &'a str,
    pub topic_arn: &'a str,
}

/// The string AWS signs: each covered field as `Name\nvalue\n`, in AWS's fixed order.
pub fn string_to_sign(fields: &SignedFields<'_>) -> String {
    let mut lines: Vec<(&str, &str)> = vec![
        ("Message", fields.message),
        ("MessageId", fields.message_id),
    ];
    match fields.message_type {
        MessageType::Notification => {
            if let Some(subject) = fields.subject {
                lines.push(("Subject", subject));
            }
            lines.push(("Timestamp", fields.timestamp));
        }
        MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => {
            lines.push(("SubscribeURL", fields.subscribe_url.unwrap_or("")));
            lines.push(("Timestamp", fields.timestamp));
            lines.push(("Token", fields.token.unwrap_or("")));
        }
    }
    lines.push(("TopicArn", fields.topic_arn));
    lines.push(("Type", fields.message_type.as_str()));
    let mut out = String::with_capacity(lines.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (name, value) in lines {
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// Why a key, certificate or signature could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureError(String);

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SignatureError {}

fn error(context: &str, e: impl fmt::Display) -> SignatureError {
    SignatureError(format!("{context}: {e}"))
}

/// The broker's SNS signing key and its self-signed certificate.
pub struct SigningKey {
    key: rsa::PrivateKey,
    key_pem: String,
    certificate_pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey").finish_non_exhaustive()
    }
}

/// Key size: what AWS's own SNS certificates use, and the smallest ring accepts for signing
/// the certificate.
const KEY_BITS: usize = 2048;
/// How long the self-signed certificate is valid.
const CERTIFICATE_DAYS: i64 = 3650;

impl SigningKey {
    /// A new RSA key and a certificate for it, issued to and by `common_name`.
    pub fn generate(common_name: &str) -> Result<SigningKey, SignatureError> {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, KEY_BITS)
            .map_err(|e| error("RSA key", e))?;
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| error("RSA key PEM", e))?
            .to_string();
        let certificate_pem = self_signed_certificate(&key_pem, common_name)?;
        Ok(SigningKey {
            key,
            key_pem,
            certificate_pem,
        })
    }

    /// A key saved earlier: its PKCS#8 PEM and the certificate made for it. Refuses a
    /// certificate whose public key is not this key's.
    pub fn from_pem(key_pem: &str, certificate_pem: &str) -> Result<SigningKey, SignatureError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(key_pem).map_err(|e| error("RSA key PEM", e))?;
        if certificate_public_key(certificate_pem)? != key.to_public_key() {
            return Err(SignatureError(
                "the certificate is not for this signing key".into(),
            ));
        }
        Ok(SigningKey {
            key,
            key_pem: key_pem.to_string(),
            certificate_pem: certificate_pem.to_string(),
        })
    }

    /// The private key, PKCS#8 PEM, for the caller to store (readable by the broker only).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate served at SigningCertURL, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The base64 `Signature` of `string_to_sign`.
    pub fn sign(&self, version: SignatureVersion, string_to_sign: &str) -> String {
        let data = string_to_sign.as_bytes();
        let signature = match version {
            SignatureVersion::V1 => self.key.pkcs1v15_sign::<Sha1>(data),
            SignatureVersion::V2 => self.key.pkcs1v15_sign::<Sha256>(data),
        };
        // Signing fails only for a digest longer than the key can hold; a 2048-bit key holds
        // SHA-1 and SHA-256 digests with room to spare.
        let signature = signature.expect("PKCS#1 v1.5 signature with a 2048-bit key");
        base64::engine::general_purpose::STANDARD.encode(signature)
    }
}

fn self_signed_certificate(key_pem: &str, common_name: &str) -> Result<String, SignatureError> {
    let key_pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| error("certificate key", e))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CERTIFICATE_DAYS);
    params.is_ca = rcgen::IsCa::NoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|e| error("certificate", e))?;
    Ok(certificate.pem())
}

fn certificate_public_key(certificate_pem: &str) -> Result<rsa::PublicKey, SignatureError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|e| error("certificate PEM", e))?;
    let certificate = pem.parse_x509().map_err(|e| error("certificate DER", e))?;
    rsa::PublicKey::from_public_key_der(certificate.tbs_certificate.subject_pki.raw)
        .map_err(|e| error("certificate public key", e))
}

/// Whether `signature` (base64) is `string_to_sign` signed by the certificate's key.
pub fn verify(
    certificate_pem: &str,
    version: SignatureVersion,
    string_to_sign: &str,
    signature: &str,
) -> Result<(), SignatureError> {
    let public_key = certificate_public_key(certificate_pem)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|e| error("Signature base64", e))?;
    let data = string_to_sign.as_bytes();
    match version {
        SignatureVersion::V1 => public_key.pkcs1v15_verify::<Sha1>(data, &signature),
        SignatureVersion::V2 => public_key.pkcs1v15_verify::<Sha256>(data, &signature),
    }
    .map_err(|e| error("signature", e))
}

fn field<'a>(envelope: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    envelope.get(name).and_then(Value::as_str)
}

/// The signed fields of an envelope (`Type`, `Message`, `MessageId`, `Timestamp`, `TopicArn`,
/// and `Subject`, `SubscribeURL`, `Token` where present).
pub fn envelope_fields(envelope: &Map<String, Value>) -> Result<SignedFields<'_>, SignatureError> {
    let required = |name: &str| {
        field(envelope, name).ok_or_else(|| SignatureError(format!("envelope without {name}")))
    };
    let message_type = MessageType::parse(required("Type")?)
        .ok_or_else(|| SignatureError("envelope of an unknown Type".into()))?;
    Ok(SignedFields {
        message_type,
        message: required("Message")?,
        message_id: required("MessageId")?,
        subject: field(envelope, "Subject"),
        subscribe_url: field(envelope, "SubscribeURL"),
        token: field(envelope, "Token"),
        timestamp: required("Timestamp")?,
        topic_arn: required("TopicArn")?,
    })
}

/// Signs an envelope built by the caller: sets `SignatureVersion` and `Signature`.
pub fn sign_envelope(
    key: &SigningKey,
    version: SignatureVersion,
    envelope: &mut Map<String, Value>,
) -> Result<(), SignatureError> {
    let signature = key.sign(version, &string_to_sign(&envelope_fields(envelope)?));
    envelope.insert("SignatureVersion".into(), version.as_str().into());
    envelope.insert("Signature".into(), signature.into());
    Ok(())
}

/// Checks an envelope's `Signature` against a certificate, as a subscriber does.
pub fn verify_envelope(
    certificate_pem: &str,
    envelope: &Map<String, Value>,
) -> Result<(), SignatureError> {
    let version = field(envelope, "SignatureVersion")
        .and_then(SignatureVersion::parse)
        .ok_or_else(|| SignatureError("envelope without a known SignatureVersion".into()))?;
    let signature = field(envelope, "Signature")
        .ok_or_else(|| SignatureError("envelope without Signature".into()))?;
    verify(
        certificate_pem,
        version,
        &string_to_sign(&envelope_fields(envelope)?),
        signature,
    )
}

#[cfg(test)]
mod tests;
