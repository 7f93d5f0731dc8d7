"""Verifying SNS message signatures the way a subscriber does, with `cryptography`.

Written from AWS's description of the string to sign, independently of the broker's code, so
tests that verify what the broker sends compare two implementations.
"""

import base64

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)


def string_to_sign(envelope):
    """`Name\\nvalue\\n` for each signed field in AWS's order; Subject only when present."""
    if envelope["Type"] == "Notification":
        names = NOTIFICATION_FIELDS
    else:
        names = CONFIRMATION_FIELDS
    return "".join(
        f"{name}\n{envelope[name]}\n" for name in names if name in envelope
    ).encode("utf-8")


def verify_envelope(envelope, certificate_pem):
    """Raise cryptography's InvalidSignature unless the envelope is signed by the certificate's
    key (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA)."""
    if isinstance(certificate_pem, str):
        certificate_pem = certificate_pem.encode()
    public_key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    digest = {"1": hashes.SHA1(), "2": hashes.SHA256()}[envelope["SignatureVersion"]]
    public_key.verify(
        base64.b64decode(envelope["Signature"]),
        string_to_sign(envelope),
        padding.PKCS1v15(),
        digest,
    )
