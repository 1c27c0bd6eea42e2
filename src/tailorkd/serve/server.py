"""Running the service: option checks, the model, uvicorn on a socket bound here, graceful shutdown.

On SIGTERM / SIGINT uvicorn stops accepting connections and lets in-flight requests finish (up to
``graceful_timeout`` seconds); the batcher stops waiting for more texts at once, and at the app's shutdown
it finishes whatever is still queued before its worker stops.

Uvicorn bounds a request's body (the app's 408) and the idle time between requests (keep-alive) but not the
time its line and headers take: a client sending a byte a second (slowloris) would hold a connection for ever.
``header_deadline_protocol`` is uvicorn's h11 protocol with that deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import sys
from typing import Any, Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tailorkd.errors import TailorkdError
from tailorkd.serve.app import ServeOptions, create_app, token_flaw
from tailorkd.serve.predictor import ServedModel

log = logging.getLogger(__name__)

MAX_WAIT_MS_LIMIT = 60_000


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or "localhost"."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # any other name may resolve to a public address
        return False


def check_options(options: ServeOptions, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token clients must send (None with auth off); a TailorkdError naming the option at fault."""
    environ = os.environ if environ is None else environ
    checks = [
        (options.max_batch_size >= 1, f"--max-batch-size: must be at least 1, got {options.max_batch_size}"),
        (0 <= options.max_wait_ms <= MAX_WAIT_MS_LIMIT,
         f"--max-wait-ms: must be between 0 and {MAX_WAIT_MS_LIMIT}, got {options.max_wait_ms:g}"),
        (options.max_texts >= 1, f"--max-texts: must be at least 1, got {options.max_texts}"),
        (options.max_chars >= 1, f"--max-chars: must be at least 1, got {options.max_chars}"),
        (options.max_body_bytes >= 1, f"--max-body-bytes: must be at least 1, got {options.max_body_bytes}"),
        (options.max_queue >= options.max_texts, f"--max-queue: must be at least --max-texts ({options.max_texts}) "
         f"so that a full request fits, got {options.max_queue}"),
        (options.graceful_timeout > 0, f"--graceful-timeout: must be positive, got {options.graceful_timeout:g}"),
        (options.body_timeout > 0, f"--body-timeout: must be positive, got {options.body_timeout:g}"),
        (options.header_timeout > 0, f"--header-timeout: must be positive, got {options.header_timeout:g}"),
        (0 <= options.port <= 65535, f"--port: must be between 0 and 65535, got {options.port}"),
        (bool(options.token_env.strip()), "--token-env: the variable's name is empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise TailorkdError(message)
    if not options.auth:
        if not is_loopback(options.host):
            raise TailorkdError(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), not "
                                f"--host {options.host}; set ${options.token_env} and drop --no-auth")
        return None
    token = environ.get(options.token_env, "")
    if not token.strip():
        raise TailorkdError(f"${options.token_env} is not set: set it to the bearer token clients must send (or "
                            "start with --no-auth on a loopback address)")
    if token_flaw(token):  # refused rather than stripped: the token is exactly what the variable holds
        raise TailorkdError(f"${options.token_env} {token_flaw(token)}; set it to the token alone")
    return token


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port), for uvicorn to listen on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise TailorkdError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the batcher to stop waiting for company as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self.on_exit = on_exit
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self.loop is not None:  # a signal handler only schedules: the batcher's lock is taken on the loop
            self.loop.call_soon_threadsafe(self.on_exit)


class HeaderDeadlineProtocol(H11Protocol):
    """Uvicorn's h11 protocol, closing a connection whose request line and headers have not all arrived within
    ``header_timeout`` seconds of its first byte (of the connection, or of the next request on a kept-alive one)
    with a 408. Uvicorn's keep-alive timer cannot do it: every byte received restarts it."""

    header_timeout = 10.0

    def connection_made(self, transport: Any) -> None:
        self.header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is held to the same deadline

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the request line and headers are not all here yet
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request may have begun arriving with this one (h11 keeps its bytes): its deadline starts now.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.header_deadline is None and not self.transport.is_closing():
            self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        body = json.dumps({"error": {"type": "request_timeout", "message": "request line and headers: not "
                                     f"received within {self.header_timeout:g} s"}}).encode()
        # Written as bytes: h11 has no request to answer yet, so it would refuse to send a response.
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"x-content-type-options: nosniff\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def header_deadline_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    """HeaderDeadlineProtocol with a header timeout of ``seconds`` (uvicorn builds its protocol from a class)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})


def make_server(app: Any, options: ServeOptions) -> GracefulServer:
    """The uvicorn server for ``app`` (from ``create_app``), logging through tailorkd's logging setup."""
    config = uvicorn.Config(app, log_config=None, access_log=options.access_log, lifespan="on",
                            timeout_graceful_shutdown=options.graceful_timeout, server_header=False,
                            http=header_deadline_protocol(options.header_timeout))
    return GracefulServer(config, on_exit=app.state.batcher.stop_waiting)


def run_service(load_model: Callable[[], ServedModel], options: ServeOptions,
                announce: Callable[[str], None] | None = None) -> None:
    """Check the options, load the model (``load_model``: a run's student or an export's ONNX graph), listen,
    and serve until SIGTERM / SIGINT."""
    token = check_options(options)
    model = load_model()
    model.predict(["warm-up"])  # the first call pays one-time costs (allocations, kernels), not a client
    app = create_app(model, options, token)
    sock = bind(options.host, options.port)
    auth = f"bearer token from ${options.token_env}" if token is not None else "off (--no-auth, loopback only)"
    message = (f"tailorkd serve: {model.name} (version {model.version}, {model.info.get('base_model')}) on "
               f"{url_of(sock)}; auth: {auth}; docs: {url_of(sock)}/docs")
    (announce or (lambda line: print(line, file=sys.stderr, flush=True)))(message)
    try:
        make_server(app, options).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after the graceful shutdown
        pass
    finally:
        sock.close()
