"""The HTTP service: ``create_app(model, options, token)`` -> a FastAPI app.

    POST /v1/classify  {"texts": [...]} -> per text label, confidence, severity, probabilities; model; latency
    GET  /healthz      200 while the batcher's worker runs (no token: for load balancers)
    GET  /metrics      Prometheus text format (token required when auth is on)
    GET  /docs         the OpenAPI page (/openapi.json), Swagger UI served from here (no CDN)
    GET  /dashboard    the signals dashboard (tailorkd.dashboard) of ``ServeOptions.signals_dir``, when given

Every refused request gets a 4xx (503 when overloaded or stopping, 500 when the model fails) and a JSON body
``{"error": {"type": ..., "message": ...}}`` whose one-line message names the field at fault. The body is
read and parsed here rather than by a FastAPI body parameter: FastAPI answers a body that is not UTF-8 with a
generic "error parsing the body", and the size limit must hold before anything is parsed. The request model
is still pydantic's (validation, the OpenAPI schema). What an answer, a page or a log line may show is
guarded by tailorkd.serve.security (docs/security.md).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from tailorkd.recipe import NO_ALERT
from tailorkd.serve.batcher import BatcherClosed, BatchStats, DynamicBatcher, QueueFull
from tailorkd.serve.predictor import ServedModel
from tailorkd.serve.security import SecurityHeadersMiddleware, TokenRedactor, page_policy, shorten

CLASSIFY_PATH = "/v1/classify"
# The paths metrics are labelled with; any other path counts as "other" (a scan must not grow the label set).
KNOWN_PATHS = (CLASSIFY_PATH, "/healthz", "/metrics", "/docs", "/openapi.json", "/dashboard")
# A browser cannot send a bearer header: it opens /dashboard?token=... once and gets this cookie instead.
DASHBOARD_COOKIE = "tailorkd_token"


@dataclass
class ServeOptions:
    """Everything ``tailorkd serve`` takes besides the recipe; the CLI's defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    token_env: str = "TAILORKD_SERVE_TOKEN"
    max_batch_size: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long the first text of a batch waits for company
    max_queue: int = 1024  # texts waiting for the model; beyond, 503
    max_texts: int = 64  # per request
    max_chars: int = 10_000  # per text
    max_body_bytes: int = 4 * 1024 * 1024  # 64 texts x 10,000 characters of 4-byte UTF-8 fit
    body_timeout: float = 30.0  # seconds a request's body may take to arrive; then 408
    header_timeout: float = 10.0  # seconds a request's line and headers may take to arrive; then 408 and close
    graceful_timeout: float = 30.0  # seconds in-flight requests get after SIGTERM / SIGINT
    access_log: bool = False
    signals_dir: Path | None = None  # the `tailorkd signals` folder GET /dashboard shows; None: no dashboard


class ServeError(Exception):
    """A request the service refuses or cannot answer: HTTP ``status``, error ``type`` and a one-line message."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    confidence: float = Field(description="its probability, calibrated by the student's fitted temperature")
    severity: str = Field(description="the alert level from the recipe's alerts.severity ('none' without it)")
    probabilities: dict[str, float] = Field(description="every class's probability, in the task's label order")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="the recipe's name")
    version: str = Field(description="the student's recipe hash (student.json): changes with what it learnt from")
    labels: list[str]


class ClassifyResponse(BaseModel):
    model: ModelInfo
    results: list[Prediction] = Field(description="one per text, in the request's order")
    latency_ms: float = Field(description="the server's time for this request, from its start to this answer")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _valid_text(text: str) -> str:
    if not text.strip():
        raise ValueError("the text is blank (only whitespace)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800": the tokenizer would fail the batch
        raise ValueError("the text is not valid Unicode (a lone surrogate)") from None
    return text


def request_model(max_texts: int, max_chars: int) -> type[BaseModel]:
    """The pydantic model of the request body, with the limits of this server (they show in /docs)."""
    text = Annotated[str, Field(min_length=1, max_length=max_chars, strict=True), AfterValidator(_valid_text)]
    texts = Annotated[list[text], Field(min_length=1, max_length=max_texts,
                                        description=f"1 to {max_texts} texts of 1 to {max_chars} characters")]
    return create_model("ClassifyRequest", __config__=ConfigDict(extra="forbid"), texts=(texts, ...))


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_message(errors: list[dict[str, Any]], max_texts: int, max_chars: int) -> str:
    """One line from pydantic's errors: the first error with its field (texts[3]) and how many more."""
    # An unknown field first: {"text": [...]} is a misspelt "texts" rather than a missing one.
    errors = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")
    e = errors[0]
    loc = tuple(p for p in e.get("loc", ()) if p != "body")
    # The field's name is the client's (an unknown key of 3 MB): the message echoes a bounded excerpt of it.
    field, kind, value = shorten(_field(loc)), e.get("type", ""), e.get("input")
    is_list = loc == ("texts",)
    messages = {
        "missing": f'{field}: missing; send {{"texts": ["..."]}}',
        "extra_forbidden": f'{field}: unknown field; the body takes only "texts"',
        "model_type": 'body: must be a JSON object {"texts": ["..."]}',
        "dict_type": 'body: must be a JSON object {"texts": ["..."]}',
        "model_attributes_type": 'body: must be a JSON object {"texts": ["..."]}',
        "list_type": f"{field}: must be a list of strings",
        "string_type": f"{field}: must be a string",
        "too_short": f"{field}: empty list; send 1 to {max_texts} texts" if is_list else None,
        "too_long": (f"{field}: {len(value) if isinstance(value, list) else 'too many'} texts, at most {max_texts} "
                     "per request") if is_list else None,
        "string_too_short": f"{field}: empty text",
        "string_unicode": f"{field}: not valid Unicode (a lone surrogate escape)",
        "string_too_long": (f"{field}: {len(value) if isinstance(value, str) else 'too many'} characters, at most "
                            f"{max_chars} per text"),
        "value_error": f"{field}: {(e.get('ctx') or {}).get('error', e.get('msg'))}",
    }
    message = messages.get(kind) or f"{field}: {shorten(e.get('msg'), 200)}"
    more = len(errors) - 1
    return message + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def _error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (several apps in one process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tailorkd_serve_requests", "HTTP requests by path and status code",
                                ["path", "status"], registry=r)
        self.latency = Histogram("tailorkd_serve_request_seconds", "time from a request's start to its answer",
                                 ["path"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.errors = Counter("tailorkd_serve_errors", "requests refused (4xx) or failed (5xx), by error type",
                              ["type"], registry=r)
        self.texts = Counter("tailorkd_serve_texts", "texts classified", registry=r)
        self.batch_texts = Histogram("tailorkd_serve_batch_texts", "texts per model call", registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_requests = Histogram("tailorkd_serve_batch_requests", "requests whose texts shared a model call",
                                        registry=r, buckets=(1, 2, 3, 4, 8, 16, 32, 64))
        self.batch_seconds = Histogram("tailorkd_serve_batch_seconds", "time of one model call", registry=r,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue = Gauge("tailorkd_serve_queue_texts", "texts waiting for a model call", registry=r)

    def observe_batch(self, stats: BatchStats) -> None:  # called from the batcher's worker thread
        self.batch_texts.observe(stats.texts)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)
        self.texts.inc(stats.texts)


class MetricsMiddleware:
    """Counts every HTTP request by path and status and times it (pure ASGI: the body streams through)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # 500 unless a response starts: an exception escaped

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``max_bytes`` (by Content-Length, or while
    it streams in when the client sends none), and with 408 when it has not all arrived within ``timeout_s``
    (a slow or stalled client must not hold a connection and its buffer for ever)."""
    try:
        return await asyncio.wait_for(_stream_body(request, max_bytes), timeout_s)
    except TimeoutError:
        raise ServeError(408, "request_timeout", f"body: not received within {timeout_s:g} s") from None


async def _stream_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ServeError(413, "body_too_large", f"body: {int(declared)} bytes, at most {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ServeError(413, "body_too_large", f"body: more than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, model: type[BaseModel], options: ServeOptions) -> Any:
    """The validated request from the raw body; a ServeError (400 / 422) naming what is wrong."""
    if not body.strip():
        raise ServeError(400, "empty_body", 'body: empty; send a JSON object {"texts": ["..."]}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServeError(400, "not_utf8", f"body: not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServeError(400, "malformed_json",
                         f"body: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # a number of too many digits, arrays nested too deeply
        raise ServeError(400, "malformed_json", f"body: JSON that cannot be read ({type(exc).__name__})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ServeError(422, "invalid_request",
                         validation_message(exc.errors(), options.max_texts, options.max_chars)) from None


def create_app(model: ServedModel, options: ServeOptions | None = None, token: str | None = None) -> FastAPI:
    """The service for ``model``. ``token``: the bearer token clients must send (None: no auth; the caller
    decides when that is allowed). ``app.state`` holds ``batcher``, ``metrics`` and ``model``."""
    options = options or ServeOptions()
    if token is not None and not token.strip():
        raise ValueError("token: empty; pass None to serve without auth")
    if token is not None and token_flaw(token):
        raise ValueError(f"token: {token_flaw(token)}")
    metrics = Metrics()
    batcher = DynamicBatcher(model.predict, max_batch_size=options.max_batch_size,
                             max_wait_s=options.max_wait_ms / 1000, max_queue=options.max_queue,
                             on_batch=metrics.observe_batch)
    metrics.queue.set_function(lambda: batcher.queued)
    request_type = request_model(options.max_texts, options.max_chars)
    expected = token.encode("utf-8") if token is not None else None
    names = list(model.label_names)
    described = model.describe()
    redactor = TokenRedactor(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redactor.install()  # while this app serves, its request loggers never see the token
        batcher.start()
        try:
            yield
        finally:
            # Uvicorn has let in-flight requests finish; the queue is empty unless the graceful timeout cut them.
            await asyncio.to_thread(batcher.close, options.graceful_timeout)
            redactor.uninstall()

    # No redirect to the same path with a slash added or removed: Starlette builds it from the Host header
    # (any host a client names) and keeps the query string (a ?token= would travel on). Such a path is a 404.
    app = FastAPI(title="tailorkd", lifespan=lifespan, docs_url=None, redoc_url=None, redirect_slashes=False,
                  description=f"The trained student of recipe **{model.name}** (version {model.version}): "
                              f"classifies texts into {', '.join(names)}.")
    app.state.batcher, app.state.metrics, app.state.model = batcher, metrics, model
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    bearer = HTTPBearer(auto_error=False, description=f"the token in ${options.token_env} of the server")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if expected is None:
            return
        if credentials is None:
            raise ServeError(401, "unauthorized", 'missing bearer token: send the header "Authorization: Bearer '
                             '<token>"', headers={"WWW-Authenticate": "Bearer"})
        # Header values arrive latin-1 decoded: encoding back gives the bytes the client sent.
        if not hmac.compare_digest(credentials.credentials.encode("latin-1"), expected):
            raise ServeError(401, "unauthorized", "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        metrics.errors.labels(exc.type).inc()
        return _error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        path = shorten(request.url.path)
        message = {404: f"{path}: no such path; see /docs",
                   405: f"{request.method} {path}: method not allowed; see /docs"}.get(
            exc.status_code, str(exc.detail))
        metrics.errors.labels(type_).inc()
        return _error_response(exc.status_code, type_, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_request").inc()
        return _error_response(422, "invalid_request",
                               validation_message(list(exc.errors()), options.max_texts, options.max_chars))

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": what} for code, what in (
            (400, "empty body, not UTF-8, malformed JSON"), (401, "missing or wrong bearer token"),
            (408, f"body not received within {options.body_timeout:g} s"),
            (413, f"body over {options.max_body_bytes} bytes"),
            (422, "wrong types, no texts, too many texts, a text too long or blank, unknown fields"),
            (503, "overloaded (retry later) or shutting down"))}

    @app.post(CLASSIFY_PATH, response_model=ClassifyResponse, responses=errors, dependencies=[Security(require_token)],
              summary="Classify texts",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": request_type.model_json_schema()}}}})
    async def classify(request: Request) -> dict[str, Any]:
        """Label, calibrated confidence, severity and class probabilities of each text, in order."""
        start = time.perf_counter()
        parsed = parse_request(await read_body(request, options.max_body_bytes, options.body_timeout),
                               request_type, options)
        try:
            future = batcher.submit(parsed.texts)
        except QueueFull as exc:
            raise ServeError(503, "overloaded", f"busy: {exc}; retry later", {"Retry-After": "1"}) from None
        except BatcherClosed:
            raise ServeError(503, "shutting_down", "the service is shutting down; retry on another replica",
                             {"Retry-After": "1"}) from None
        try:
            probs = await asyncio.wrap_future(future)
        except Exception as exc:
            raise ServeError(500, "model_error", f"the model failed on this request's batch ({type(exc).__name__}); "
                             "see the server log") from None
        results = []
        for p in probs:
            best = int(p.argmax())
            confidence = float(p[best])
            results.append({"label": names[best], "confidence": confidence,
                            "severity": model.alerts.level(names[best], confidence) if model.alerts else NO_ALERT,
                            "probabilities": {name: float(v) for name, v in zip(names, p)}})
        return {"model": described, "results": results, "latency_ms": (time.perf_counter() - start) * 1000}

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> JSONResponse:
        """200 while the model's worker runs; 503 otherwise. No token needed."""
        ok = batcher.running
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": model.name,
                             "version": model.version, "queued_texts": batcher.queued},
                            status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Security(require_token)],
             response_class=Response, responses={401: {"model": ErrorResponse}})
    async def prometheus_metrics() -> Response:
        """Requests by path and status, latency, texts per batch, requests per batch, errors by type."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    add_docs(app)
    if options.signals_dir is not None:
        add_dashboard(app, options.signals_dir, expected, bearer)
    return app


def token_flaw(token: str) -> str | None:
    """Why no client could ever send ``token`` in an Authorization header, or None: HTTP strips a header
    value's leading and trailing whitespace, and a control character cannot be sent at all."""
    if token != token.strip():
        return "has leading or trailing whitespace, which HTTP strips from a header: no client could send it"
    if any(ord(c) < 32 or ord(c) == 127 for c in token):
        return "holds a control character, which an HTTP header cannot carry: no client could send it"
    return None


# Swagger UI's files, served by this server from the swagger-ui-bundle package: /docs works offline.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon-32x32.png": "image/png"}
DOCS_ASSETS_PATH = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI on /openapi.json, its script, style and icon from this server (DOCS_ASSETS_PATH),
    under a Content-Security-Policy that allows nothing else."""
    folder = Path(str(swagger_ui_path))
    html = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                               swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon-32x32.png",
                               oauth2_redirect_url=None).body.decode()
    policy = page_policy(html, connect_self=True)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    for name, media_type in DOCS_ASSETS.items():
        app.add_api_route(f"{DOCS_ASSETS_PATH}/{name}", _asset(folder / name, media_type), methods=["GET"],
                          include_in_schema=False)


def _asset(path: Path, media_type: str) -> Any:
    """A route answering the one file ``path`` (a closure: the route takes no parameter from the client)."""
    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=86400"})
    return asset


def add_dashboard(app: FastAPI, folder: Path, expected: bytes | None, bearer: HTTPBearer) -> None:
    """GET /dashboard: the signals page of ``folder``, rendered again when its files change. With auth on, the
    token comes as a bearer header, as the cookie, or once as ``?token=`` (answered by a redirect that sets the
    HttpOnly cookie, so the token leaves the address bar and the browser's history)."""
    from tailorkd.dashboard import DashboardPage
    from tailorkd.errors import TailorkdError

    page = DashboardPage(folder)

    @app.get("/dashboard", summary="The signals dashboard", response_class=HTMLResponse,
             responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def dashboard(request: Request, token: str | None = None,
                        credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
        """The signal index per topic over time, the alerts with their top articles and the class mix, as one
        self-contained HTML page."""
        if expected is not None:
            # Query and cookie values arrive decoded as UTF-8, header values as latin-1: back to the bytes sent.
            query = (token or "").encode("utf-8", "surrogateescape")
            sources = [query, (request.cookies.get(DASHBOARD_COOKIE) or "").encode("utf-8", "surrogateescape"),
                       credentials.credentials.encode("latin-1") if credentials else b""]
            if not any(sources):
                raise ServeError(401, "unauthorized", "missing token: open /dashboard?token=<token> once, or send "
                                 '"Authorization: Bearer <token>"')
            # A valid credential from any source lets in (a stale cookie must not lock out a good header);
            # each is compared in constant time, all of them every time.
            valid = [bool(given) and hmac.compare_digest(given, expected) for given in sources]
            if not any(valid):
                raise ServeError(401, "unauthorized", "invalid token")
            if token is not None:
                # The token leaves the address bar at once; a relative address: no host the client named.
                response = RedirectResponse("/dashboard", status_code=303)
                if valid[0]:
                    response.set_cookie(DASHBOARD_COOKIE, token, httponly=True, samesite="strict",
                                        path="/dashboard", secure=request.url.scheme == "https")
                return response
        try:
            html = await asyncio.to_thread(page.get)
        except TailorkdError as exc:
            raise ServeError(404, "no_signals", str(exc)) from None
        return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": page_policy(html)})
