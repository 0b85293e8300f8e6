"""Local receivers for the tests and the demo: an SMTP server, a server that speaks GOV.UK Notify's API, and a
webhook receiver that verifies signatures. Each records what it received, so what was sent can be shown.

They are real servers on 127.0.0.1 (real sockets, real protocols): the channels cannot tell them from the
services they stand for. The Notify one checks the client's JWT (HS256, issuer = service id) as Notify does and
answers with Notify's response shape; the webhook receiver answers 401 to a bad signature.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

from carewatch.notify.channels import verify


@dataclass
class Received:
    """One request or message as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    verified: bool = False
    recipient: str | None = None
    text: str | None = None


class _Server:
    """A threaded HTTP server on a free port of 127.0.0.1, run in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]  # the handler class reaches its receiver through the server
        self.httpd = server
        self.port = server.server_address[1]
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _Server:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, item: Received) -> None:
        with self.lock:
            self.received.append(item)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, doc: Any) -> None:
        payload = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


# ------------------------------------------------------------------------------------------------------------
def notify_api_key(service_id: str, secret: str, name: str = "carewatch") -> str:
    """A Notify API key as Notify issues them: ``{name}-{service id}-{secret}`` (both UUIDs)."""
    return f"{name}-{service_id}-{secret}"


class _NotifyHandler(_Handler):
    def do_POST(self) -> None:
        server: NotifyServer = self.server.owner  # type: ignore[attr-defined]  # set by NotifyServer (above)
        body = self._body()
        headers = dict(self.headers.items())
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = None
        token = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(token, server.secret, algorithms=["HS256"], options={"require": ["iss", "iat"]})
            verified = claims["iss"] == server.service_id
        except jwt.PyJWTError:
            verified = False
        item = Received(self.path, headers, body, doc, verified)
        if isinstance(doc, dict):
            item.recipient = doc.get("phone_number") or doc.get("email_address")
            item.text = (doc.get("personalisation") or {}).get("message")
        server.record(item)
        if not verified:
            self._answer(403, {"errors": [{"error": "AuthError", "message": "Invalid token: signature"}],
                               "status_code": 403})
            return
        if self.path != "/v2/notifications/sms" or not isinstance(doc, dict) or not doc.get("phone_number") \
                or not doc.get("template_id"):
            self._answer(400, {"errors": [{"error": "BadRequestError", "message": "phone_number and template_id "
                                                                                   "are required"}],
                               "status_code": 400})
            return
        note_id = str(uuid.uuid4())
        self._answer(201, {
            "id": note_id, "reference": doc.get("reference"),
            "content": {"body": item.text or "", "from_number": "Carewatch"},
            "uri": f"{server.url}/v2/notifications/{note_id}",
            "template": {"id": doc["template_id"], "version": 1,
                         "uri": f"{server.url}/services/{server.service_id}/templates/{doc['template_id']}"},
        })


class NotifyServer(_Server):
    """Speaks GOV.UK Notify's ``POST /v2/notifications/sms`` for the official client; records every request."""

    def __init__(self, service_id: str | None = None, secret: str | None = None) -> None:
        self.service_id = service_id or str(uuid.uuid4())
        self.secret = secret or str(uuid.uuid4())
        self.template_id = str(uuid.uuid4())
        super().__init__(_NotifyHandler)

    @property
    def api_key(self) -> str:
        return notify_api_key(self.service_id, self.secret)


# ------------------------------------------------------------------------------------------------------------
class _WebhookHandler(_Handler):
    def do_POST(self) -> None:
        server: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]  # set by the receiver
        body = self._body()
        headers = dict(self.headers.items())
        ok = verify(server.secret, headers, body)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        server.record(Received(self.path, headers, body, doc, ok, recipient=server.url + self.path,
                               text=doc.get("text") if isinstance(doc, dict) else None))
        self._answer(200 if ok else 401, {"ok": ok})


class WebhookReceiver(_Server):
    """Another system's webhook endpoint: accepts only requests signed with the shared secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        super().__init__(_WebhookHandler)


# ------------------------------------------------------------------------------------------------------------
@dataclass
class SmtpServer:
    """A real SMTP server (aiosmtpd) on a free port of 127.0.0.1 that keeps every message it accepts."""

    received: list[Received] = field(default_factory=list)
    port: int = 0

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller

        from carewatch.embedded import free_port

        owner = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mail = message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
                body = mail.get_body(preferencelist=("plain",))
                text = body.get_content() if body is not None else ""
                for rcpt in envelope.rcpt_tos:
                    owner.received.append(Received("smtp", {k: str(v) for k, v in mail.items()},
                                                   envelope.content, None, True, rcpt, text))
                return "250 Message accepted for delivery"

        self.port = self.port or free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
