"""Standard Webhooks signatures (SPEC §4): ntq.signing against the published test vector and
against the independent ``standardwebhooks`` verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ntq import signing

# The example of the Standard Webhooks / Svix documentation ("Verifying signatures
# manually"): this secret, id, timestamp and payload sign to this value.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BINARY = bytes(range(256)) + b"\xff\xfe\x00\x80"


def test_signature_matches_the_published_vector() -> None:
    assert (
        signing.signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
        == VECTOR_SIGNATURE
    )


def test_headers_carry_id_timestamp_and_signature() -> None:
    headers = signing.headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_new_secrets_are_standard_random_32_byte_keys() -> None:
    secrets = {signing.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
        Webhook(secret)  # the independent library accepts the format


def test_independent_verifier_accepts_ntq_signatures() -> None:
    secret = signing.new_secret()
    body = '{"greeting": "héllo wörld ✓ 😀", "n": [1, 2, 3]}'.encode()
    now = int(time.time())
    headers = signing.headers(secret, "0190b2c4-aaaa-7bbb-8ccc-123456789abc", now, body)
    assert Webhook(secret).verify(body, headers) == {"greeting": "héllo wörld ✓ 😀", "n": [1, 2, 3]}


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_independent_verifier_rejects_tampering(tamper: str) -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    body, now, msg_id = b'{"amount": 100}', int(time.time()), "task-1"
    headers = signing.headers(secret, msg_id, now, body)
    if tamper == "body":
        body = b'{"amount": 900}'
    elif tamper == "id":
        headers["webhook-id"] = "task-2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = other
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_binary_body_is_signed_over_its_exact_bytes() -> None:
    # standardwebhooks 1.1.0's verify() decodes the body as UTF-8, so it cannot take a
    # binary body; the scheme itself signs raw bytes: HMAC-SHA256("{id}.{ts}." + body).
    secret = signing.new_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    got = signing.signature(secret, "t", 1700000000, BINARY)
    digest = hmac.new(key, b"t.1700000000." + BINARY, hashlib.sha256).digest()
    assert got == "v1," + base64.b64encode(digest).decode()
    assert got != signing.signature(secret, "t", 1700000000, BINARY[:-1] + b"\x81")


def test_without_a_secret_there_is_no_signature() -> None:
    headers = signing.headers(None, "t", 1700000000, b"x")
    assert headers == {"webhook-id": "t", "webhook-timestamp": "1700000000"}
