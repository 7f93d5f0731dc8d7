//! String-to-sign shapes, known answers from OpenSSL-made vectors (vectors/README.md), and
//! sign-then-verify with a freshly generated key and certificate.

use serde_json::{json, Map, Value};

use super::*;

const VECTOR_KEY: &str = include_str!("vectors/key.pem");
const VECTOR_CERT: &str = include_str!("vectors/cert.pem");
const VECTOR_ENVELOPES: &str = include_str!("vectors/envelopes.json");

fn vectors() -> Vec<Map<String, Value>> {
    serde_json::from_str(VECTOR_ENVELOPES).unwrap()
}

fn notification<'a>(subject: Option<&'a str>) -> SignedFields<'a> {
    SignedFields {
        message_type: MessageType::Notification,
        message: "Hello world!",
        message_id: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        subject,
        subscribe_url: Some("ignored for notifications"),
        token: Some("ignored for notifications"),
        timestamp: "2026-11-26T12:00:00.000Z",
        topic_arn: "arn:aws:sns:us-east-1:000000000000:orders",
    }
}

#[test]
fn notification_string_to_sign_has_subject_only_when_present() {
    assert_eq!(
        string_to_sign(&notification(Some("My First Message"))),
        "Message\nHello world!\n\
         MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
         Subject\nMy First Message\n\
         Timestamp\n2026-11-26T12:00:00.000Z\n\
         TopicArn\narn:aws:sns:us-east-1:000000000000:orders\n\
         Type\nNotification\n"
    );
    assert_eq!(
        string_to_sign(&notification(None)),
        "Message\nHello world!\n\
         MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
         Timestamp\n2026-11-26T12:00:00.000Z\n\
         TopicArn\narn:aws:sns:us-east-1:000000000000:orders\n\
         Type\nNotification\n"
    );
}

#[test]
fn confirmation_strings_to_sign_carry_subscribe_url_and_token() {
    for (message_type, name) in [
        (
            MessageType::SubscriptionConfirmation,
            "SubscriptionConfirmation",
        ),
        (
            MessageType::UnsubscribeConfirmation,
            "UnsubscribeConfirmation",
        ),
    ] {
        let fields = SignedFields {
            message_type,
            message: "confirm",
            message_id: "id-1",
            subject: Some("not signed for confirmations"),
            subscribe_url: Some("http://localhost:4566/?Action=ConfirmSubscription"),
            token: Some("tok"),
            timestamp: "2026-11-26T12:00:02.000Z",
            topic_arn: "arn:aws:sns:us-east-1:000000000000:t",
        };
        assert_eq!(
            string_to_sign(&fields),
            format!(
                "Message\nconfirm\nMessageId\nid-1\n\
                 SubscribeURL\nhttp://localhost:4566/?Action=ConfirmSubscription\n\
                 Timestamp\n2026-11-26T12:00:02.000Z\nToken\ntok\n\
                 TopicArn\narn:aws:sns:us-east-1:000000000000:t\nType\n{name}\n"
            )
        );
    }
}

/// PKCS#1 v1.5 signatures are deterministic: ours must equal OpenSSL's, byte for byte.
#[test]
fn signatures_equal_openssl_known_answers() {
    let key = SigningKey::from_pem(VECTOR_KEY, VECTOR_CERT).unwrap();
    let envelopes = vectors();
    assert_eq!(envelopes.len(), 4);
    for envelope in envelopes {
        let mut resigned = envelope.clone();
        resigned.remove("Signature");
        let version =
            SignatureVersion::parse(envelope["SignatureVersion"].as_str().unwrap()).unwrap();
        sign_envelope(&key, version, &mut resigned).unwrap();
        assert_eq!(
            resigned["Signature"], envelope["Signature"],
            "{:?}",
            envelope["Type"]
        );
        verify_envelope(VECTOR_CERT, &envelope).unwrap();
    }
}

#[test]
fn a_changed_field_or_version_fails_verification() {
    for envelope in vectors() {
        for (name, value) in [
            ("Message", json!("Hello world?")),
            ("MessageId", json!("other")),
            ("Timestamp", json!("2026-11-26T12:00:00.001Z")),
            (
                "TopicArn",
                json!("arn:aws:sns:us-east-1:000000000000:other"),
            ),
        ] {
            let mut changed = envelope.clone();
            changed.insert(name.into(), value);
            assert!(verify_envelope(VECTOR_CERT, &changed).is_err(), "{name}");
        }
        let mut other_version = envelope.clone();
        let flipped = if envelope["SignatureVersion"] == "1" {
            "2"
        } else {
            "1"
        };
        other_version.insert("SignatureVersion".into(), json!(flipped));
        assert!(verify_envelope(VECTOR_CERT, &other_version).is_err());
    }
    // A subject added to a notification signed without one.
    let mut with_subject = vectors()[1].clone();
    with_subject.insert("Subject".into(), json!("added"));
    assert!(verify_envelope(VECTOR_CERT, &with_subject).is_err());
}

#[test]
fn generated_key_signs_what_its_certificate_verifies() {
    let key = SigningKey::generate("wharf-sns-test").unwrap();
    assert!(key
        .certificate_pem()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    let text = string_to_sign(&notification(Some("s")));
    for version in [SignatureVersion::V1, SignatureVersion::V2] {
        let signature = key.sign(version, &text);
        verify(key.certificate_pem(), version, &text, &signature).unwrap();
        // Another certificate's key does not verify it.
        assert!(verify(VECTOR_CERT, version, &text, &signature).is_err());
    }
    // Saved and reloaded, the key signs identically.
    let reloaded = SigningKey::from_pem(key.key_pem(), key.certificate_pem()).unwrap();
    assert_eq!(
        reloaded.sign(SignatureVersion::V2, &text),
        key.sign(SignatureVersion::V2, &text)
    );
    // A certificate of another key is refused.
    assert!(SigningKey::from_pem(key.key_pem(), VECTOR_CERT).is_err());
    assert!(SigningKey::from_pem("not a key", key.certificate_pem()).is_err());
    assert!(format!("{key:?}").find("PRIVATE").is_none());
}

#[test]
fn envelopes_missing_signed_fields_are_refused() {
    let key = SigningKey::from_pem(VECTOR_KEY, VECTOR_CERT).unwrap();
    let mut envelope = vectors()[0].clone();
    envelope.remove("MessageId");
    assert!(sign_envelope(&key, SignatureVersion::V1, &mut envelope).is_err());
    let mut envelope = vectors()[0].clone();
    envelope.insert("Type".into(), json!("Other"));
    assert!(sign_envelope(&key, SignatureVersion::V1, &mut envelope).is_err());
    let mut envelope = vectors()[0].clone();
    envelope.insert("SignatureVersion".into(), json!("3"));
    assert!(verify_envelope(VECTOR_CERT, &envelope).is_err());
    assert_eq!(SignatureVersion::default(), SignatureVersion::V1);
    assert_eq!(
        MessageType::parse("Notification"),
        Some(MessageType::Notification)
    );
}
