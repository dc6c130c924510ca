"""Auth and body size, in front of everything: a plain ASGI middleware. HTTP Basic (as A1111's
``--api-auth``) on every path when credentials are set, the page and its files included; a request body
larger than the limit gets 413 before anything parses it."""

from __future__ import annotations

import base64
import binascii
import json
import secrets

from .errors import body


class Gate:
    """HTTP Basic auth (when credentials are set) on every path, the page included, and a bound on the
    body: a larger request gets 413 before it is parsed. The body is read here and handed on."""

    def __init__(self, app, credentials: dict[str, str], max_body: int):
        self.app, self.credentials, self.max_body = app, credentials, max_body

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        ok = False
        for u, p in self.credentials.items():  # compare with every pair: no early exit to time
            ok |= secrets.compare_digest(user.encode(), u.encode()) & secrets.compare_digest(password.encode(), p.encode())
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.credentials and not self._authorized(headers):
            return await _reply(send, 401, body("HTTPException", "Incorrect username or password",
                                                "401: Incorrect username or password"),
                                {"www-authenticate": 'Basic realm="latentgen"'})
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reply(send, 413, _too_large(self.max_body))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _reply(send, 413, _too_large(self.max_body))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        data, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # then the real channel: it reports a disconnect

        return await self.app(scope, replay, send)


def _too_large(limit: int) -> dict:
    return body("HTTPException", f"the request body is larger than this server's limit of {limit} bytes "
                                 f"(--max-body-mb): send smaller images.")


async def _reply(send, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(content).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


HEADER_SECONDS = 10.0  # a connection's request headers must arrive within this (``--header-timeout``)


def http_protocol(header_seconds: float = HEADER_SECONDS):
    """uvicorn's h11 protocol with a deadline: a connection that has not sent a whole request head within
    ``header_seconds`` of opening, or of its last response, is closed. Idle and slow-header (slowloris)
    connections thus go away on their own, before any auth, and never wait in front of real requests; the
    work itself is bounded by the job queue (429), not by counting connections (uvicorn's ``limit_concurrency``
    would answer 503 to everyone while idle sockets are open). A reverse proxy in front should still bound
    connections per client."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        deadline = None

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(header_seconds, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _too_slow(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()  # no request in flight: nobody waits for an answer

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a whole request head arrived: the job's own limits apply now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request head (keep-alive) gets the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol
