"""Real signing for the provider webhook tests: an RSA key and self-signed certificate served
by a local HTTP server (standing in for sns.<region>.amazonaws.com, through
`NUDGE_SNS_CERT_URL_PATTERN`), SNS message signing (SignatureVersion 1 and 2), and a SendGrid
ECDSA key pair."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from nudge.mail.feedback import sns_string_to_sign


def self_signed() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test-region.local")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


TOPIC = "arn:aws:sns:x:1:ses"


def sns_now() -> str:
    """An SNS `Timestamp` of now (what a fresh message carries)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SnsServer:
    """Serves the certificate at /SimpleNotificationService-<id>.pem and records every GET."""

    base: str
    cert_url: str
    key: rsa.RSAPrivateKey
    gets: list[str] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        return "^" + self.base.replace(".", r"\.") + "/"

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        message = message | {"SignatureVersion": version, "SigningCertURL": self.cert_url}
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = self.key.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        return message | {"Signature": base64.b64encode(signature).decode()}

    def notification(
        self, payload: dict[str, Any], version: str = "2", topic: str = TOPIC
    ) -> dict[str, Any]:
        return self.sign(
            {
                "Type": "Notification",
                "MessageId": str(uuid.uuid4()),
                "TopicArn": topic,
                "Message": json.dumps(payload),
                "Timestamp": sns_now(),
            },
            version,
        )


@contextmanager
def sns_server() -> Iterator[SnsServer]:
    key, pem = self_signed()
    gets: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            gets.append(self.path)
            body = pem if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield SnsServer(base, f"{base}/SimpleNotificationService-{uuid.uuid4().hex}.pem", key, gets)
    finally:
        server.shutdown()
        server.server_close()


def ses_bounce(email: str, message_id: str | None, permanent: bool = True) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent" if permanent else "Transient",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "550 5.1.1 unknown"}],
            "timestamp": "2026-11-24T10:00:00.000Z",
        },
        "mail": {"commonHeaders": {"messageId": f"<{message_id}>" if message_id else None}},
    }


def ses_complaint(email: str, message_id: str | None) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-11-24T10:00:00.000Z",
        },
        "mail": {"headers": [{"name": "Message-ID", "value": f"<{message_id}>"}]},
    }


class SendGridKey:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(timestamp if timestamp is not None else int(datetime.now(UTC).timestamp()))
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }
