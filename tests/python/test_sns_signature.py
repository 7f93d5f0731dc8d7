"""The subscriber-side verifier (sns_signature.py) against the OpenSSL-made vectors the Rust
signer is tested with: both sides read AWS's string-to-sign rules the same way."""

import copy
import json
import pathlib

import pytest
from cryptography.exceptions import InvalidSignature

from sns_signature import verify_envelope

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "bridge/src/sns/signature/vectors"


def envelopes():
    return json.loads((VECTORS / "envelopes.json").read_text())


def certificate():
    return (VECTORS / "cert.pem").read_text()


@pytest.mark.parametrize("index", range(4))
def test_vector_envelopes_verify(index):
    envelope = envelopes()[index]
    verify_envelope(envelope, certificate())


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("field", ["Message", "MessageId", "Timestamp", "TopicArn"])
def test_changed_signed_field_fails(index, field):
    envelope = copy.deepcopy(envelopes()[index])
    envelope[field] += "x"
    with pytest.raises(InvalidSignature):
        verify_envelope(envelope, certificate())


def test_unsigned_fields_do_not_matter_and_subject_does():
    envelope = copy.deepcopy(envelopes()[0])
    envelope["SigningCertURL"] = "http://elsewhere/cert.pem"
    envelope["UnsubscribeURL"] = "http://elsewhere/unsubscribe"
    verify_envelope(envelope, certificate())
    del envelope["Subject"]
    with pytest.raises(InvalidSignature):
        verify_envelope(envelope, certificate())
