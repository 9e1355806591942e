"""Notification tickets: how a web page reaches the notification routes.

Browsers cannot send ``Authorization`` on an ``EventSource`` or a ``WebSocket``, and the
admin token must not travel in a URL (URLs end up in logs and browser history). A page
asks its backend, which holds the admin token, for a ticket (``POST
/notifications/ticket``) and opens ``/notifications?ticket=...``. A ticket is valid for
:data:`TICKET_TTL_MS` on every API process that shares the admin token, opens the
notification routes only, and is signed with HMAC-SHA256 under a key derived from the
admin token. Query strings are not logged; the ticket is redacted from span attributes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["TICKET_TTL_MS", "issue_ticket", "redact_ticket_in_span", "ticket_is_valid"]

TICKET_TTL_MS: Final = 60_000
_VERSION = "t1"
_TICKET_IN_TEXT = re.compile(r"(ticket=)[^&\s]*")


def _key(admin_token: str) -> bytes:
    """A key for tickets only: a ticket never reveals anything about the token itself."""
    return hmac.new(admin_token.encode(), b"throttler notification ticket", hashlib.sha256).digest()


def _sign(admin_token: str, payload: str) -> str:
    digest = hmac.new(_key(admin_token), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_ticket(admin_token: str, now_ms: int, ttl_ms: int = TICKET_TTL_MS) -> str:
    """``t1.<expiry ms>.<nonce>.<signature>``: URL-safe, opaque to the client."""
    payload = f"{_VERSION}.{now_ms + ttl_ms}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_sign(admin_token, payload)}"


def ticket_is_valid(admin_token: str, ticket: str, now_ms: int) -> bool:
    """Signed with this admin token and not expired (compared in constant time)."""
    payload, _, signature = ticket.rpartition(".")
    version, _, rest = payload.partition(".")
    expires, _, _nonce = rest.partition(".")
    if version != _VERSION or not expires.isdigit():
        return False
    if not hmac.compare_digest(signature.encode(), _sign(admin_token, payload).encode()):
        return False
    return now_ms < int(expires)


def redact_ticket_in_span(span: Span, scope: Any) -> None:
    """OpenTelemetry server-request hook: the URL attributes of a span never hold a ticket."""
    if b"ticket=" not in scope.get("query_string", b"") or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in ("http.url", "url.full", "http.target", "url.query"):
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, _TICKET_IN_TEXT.sub(r"\1***", value))
