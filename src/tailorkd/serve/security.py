"""What the service does so that its answers, pages and logs give nothing away (docs/security.md).

    SecurityHeadersMiddleware  nosniff, no framing, no referrer, a default-deny Content-Security-Policy
    page_policy                the CSP of one HTML page: its own inline scripts by hash, nothing from elsewhere
    TokenRedactor              a logging filter: the token, and any ``token=`` query value, never reach a log
    shorten                    what an error message may echo of the client's input (a bounded excerpt)
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

# The loggers uvicorn writes request lines to (access) and its own messages to (error).
REQUEST_LOGGERS = ("uvicorn.access", "uvicorn.error")
REDACTED = "[redacted]"
# What an error message echoes of a client's input at most (a field name, a path): enough to recognise it.
ECHO_CHARS = 60
# Every answer that is not a page of ours: nothing may run, load or frame it.
DEFAULT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # an address with ?token= must not travel on in a Referer header
}
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
_TOKEN_PARAM = re.compile(r"(?i)([?&;]token=)[^&;#\s\"']*")


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as an error message may show it: whole when short, else its start and its length."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


@lru_cache(maxsize=8)  # a page is answered many times as it is
def page_policy(html: str, connect_self: bool = False) -> str:
    """The Content-Security-Policy of ``html``: its inline scripts by their SHA-256 (so injected markup cannot
    run script), scripts, styles and images of this server, inline styles and data: images (the charts' SVG,
    Swagger UI's icons), and no framing."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src 'self' {hashes}".rstrip() + "; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; " + ("connect-src 'self'; " if connect_self else "")
            + "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every HTTP answer, and DEFAULT_POLICY to those that set no policy of their own
    (pure ASGI: bodies stream through)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = {**SECURITY_HEADERS, "content-security-policy": DEFAULT_POLICY}
                headers += [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenRedactor(logging.Filter):
    """Rewrites a log record so that neither ``secret`` (as sent, or percent-encoded in an address) nor the
    value of a ``token=`` query parameter appears in it. The record keeps its shape (its arguments stay a tuple
    of the same length: uvicorn's access formatter unpacks them)."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secrets = sorted({s for s in (secret, quote(secret or "", safe=""), quote_plus(secret or "")) if s},
                              key=len, reverse=True)

    def redact(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return _TOKEN_PARAM.sub(rf"\g<1>{REDACTED}", value)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self.redact(v) for k, v in record.args.items()}
        return True

    def install(self) -> None:
        for name in REQUEST_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in REQUEST_LOGGERS:
            logging.getLogger(name).removeFilter(self)
