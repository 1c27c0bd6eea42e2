"""`tailorkd serve` as an attacker and a careless operator meet it (docs/security.md): the token never reaches a
log or a redirect, any valid credential lets in, a token no client could send is refused at start-up, slow
headers time out, every answer carries its security headers, /docs needs no network, and errors echo only a
bounded excerpt of what the client sent.

Real uvicorn on a free loopback port (``running``); no test measures time: a timeout under test is short and the
test only waits, with a generous safety net, for what the server does when it passes.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import select
import socket
import threading
import time

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from helpers import PATIENCE_S, browser, fake_model, gated, running, wait_for, write_signals
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.serve.app import DASHBOARD_COOKIE, ServeOptions, create_app
from tailorkd.serve.server import check_options

TOKEN = "s3cret-T0ken_for-security"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dashboard_app(tmp_path):
    options = ServeOptions(signals_dir=write_signals(tmp_path / "signals"), access_log=True)
    return create_app(fake_model(), options, token=TOKEN), options


def raw_request(url: str, data: bytes, trickle_s: float | None = None) -> bytes:
    """What the server answers on a raw connection to ``url`` that sends ``data`` (a byte every ``trickle_s``
    seconds, for ever when it runs out, when given) until the server closes it or PATIENCE_S passes."""
    host, port = url.removeprefix("http://").split(":")
    answer, sent, deadline = b"", 0, time.monotonic() + PATIENCE_S
    with socket.create_connection((host, int(port)), timeout=PATIENCE_S) as conn:
        if trickle_s is None:
            conn.sendall(data)
        while time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], trickle_s or 1.0)
            if readable:
                chunk = conn.recv(65536)
                if not chunk:
                    return answer
                answer += chunk
            elif trickle_s is not None:
                try:
                    conn.sendall(data[sent : sent + 1] if sent < len(data) else b"a")
                except OSError:  # closed while we wrote: read what it said
                    continue
                sent += 1
    raise AssertionError(f"the server kept the connection open for {PATIENCE_S} s; it said {answer[:200]!r}")


# -- item 1: the token never reaches a log ----------------------------------------------------------------------
def test_the_token_never_reaches_the_access_log(dashboard_app, caplog):
    app, options = dashboard_app
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
        login = client.get(f"/dashboard?token={TOKEN}", follow_redirects=False)
        assert login.status_code == 303
        assert client.get("/dashboard").status_code == 200  # by the cookie
        assert client.get(f"/metrics?token={TOKEN}&x=1", headers=AUTH).status_code == 200
        assert client.get(f"/nowhere/{TOKEN}").status_code == 404  # the token where no parameter is
    lines = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert len(lines) == 4, [r.getMessage() for r in lines]
    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    shown = [r.getMessage() for r in lines] + [formatter.format(r) for r in lines]
    assert "GET /dashboard?token=[redacted] HTTP/1.1" in shown[0] and "/metrics?token=[redacted]&x=1" in shown[2]
    assert "/nowhere/[redacted]" in shown[3]
    assert all(TOKEN not in line for line in shown) and TOKEN not in caplog.text


# -- item 6: any valid credential lets in ---------------------------------------------------------------------
def test_a_stale_cookie_does_not_lock_out_a_valid_bearer_header(dashboard_app):
    app, options = dashboard_app
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
        client.cookies.set(DASHBOARD_COOKIE, "stale")
        assert client.get("/dashboard").status_code == 401
        assert client.get("/dashboard", headers=AUTH).status_code == 200  # the header is good
        assert client.get("/dashboard", headers={"Authorization": "Bearer nope"}).status_code == 401
        # A wrong ?token= beside a good header: let in, the address cleaned, no cookie from the wrong token.
        wrong = client.get("/dashboard?token=nope", headers=AUTH, follow_redirects=False)
        assert wrong.status_code == 303 and wrong.headers["location"] == "/dashboard"
        assert "set-cookie" not in wrong.headers
        # A good ?token= beside the stale cookie: the cookie is set anew.
        good = client.get(f"/dashboard?token={TOKEN}", follow_redirects=False)
        assert good.status_code == 303 and DASHBOARD_COOKIE in good.headers["set-cookie"]
        # A good cookie beside a wrong header lets in too.
        cookie = {DASHBOARD_COOKIE: good.cookies[DASHBOARD_COOKIE]}
        wrong_header = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{url}/dashboard", cookies=cookie, headers=wrong_header).status_code == 200
        assert httpx.get(f"{url}/dashboard", cookies={DASHBOARD_COOKIE: "stale"}).status_code == 401
        assert httpx.get(f"{url}/dashboard").json()["error"]["message"].startswith("missing token")


# -- item 7: a token no client could send -----------------------------------------------------------------------
@pytest.mark.parametrize("token", [f"{TOKEN} ", f" {TOKEN}", f"{TOKEN}\n", f"{TOKEN}\t", "to\x01ken"])
def test_a_token_no_client_could_send_is_refused_at_start_up(token, tmp_path, monkeypatch, capsys):
    with pytest.raises(TailorkdError, match="TAILORKD_SERVE_TOKEN .*no client could send it"):
        check_options(ServeOptions(), environ={"TAILORKD_SERVE_TOKEN": token})
    with pytest.raises(ValueError, match="no client could send it"):
        create_app(fake_model(), token=token)
    monkeypatch.setenv("TAILORKD_SERVE_TOKEN", token)
    assert main(["serve", str(tmp_path)]) == 2  # refused before anything is loaded from the folder
    err = capsys.readouterr().err
    assert "no client could send it" in err and err.count("\n") == 1 and token.strip() not in err
    assert check_options(ServeOptions(), environ={"TAILORKD_SERVE_TOKEN": "in side"}) == "in side"


# -- item 12: redirects ---------------------------------------------------------------------------------------
def test_no_redirect_names_a_forged_host_or_carries_the_token(dashboard_app):
    app, options = dashboard_app
    forged = {"Host": "attacker.example"}
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
        answers = {path: client.get(path, headers=forged, follow_redirects=False) for path in (
            f"/dashboard/?token={TOKEN}", f"/dashboard?token={TOKEN}", f"/docs/?token={TOKEN}",
            f"/v1/classify/?token={TOKEN}", f"/metrics/?token={TOKEN}", f"/healthz/?token={TOKEN}")}
    assert answers[f"/dashboard?token={TOKEN}"].headers["location"] == "/dashboard"
    for path, r in answers.items():
        location = r.headers.get("location")
        if location is not None:
            assert location.startswith("/") and not location.startswith("//"), (path, location)
            assert TOKEN not in location and "attacker" not in location, (path, location)
        else:
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", (path, r.text)


# -- item 13: slow headers, headers, /docs offline, bounded echoes ---------------------------------------------
def test_slow_request_headers_get_a_408_and_the_connection_is_closed(model_free_app):
    app, options = model_free_app
    with running(app, options) as (url, _):
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        for trickle in (0.05, None):  # a byte at a time for ever; a request that stops half way
            answer = raw_request(url, request, trickle_s=trickle)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"request line and headers: not received within 0.5 s" in answer
        assert raw_request(url, b"", trickle_s=None).startswith(b"HTTP/1.1 408 ")  # a connection saying nothing
        # A client that keeps its connection and sends its next request slowly is held to the same deadline.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=PATIENCE_S) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
            answer = b""
            while answer.count(b"HTTP/1.1 ") < 2:
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer
        assert httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code == 200  # others were served all along


def test_the_header_timeout_must_be_positive():
    for seconds in (0, -1):
        with pytest.raises(TailorkdError, match=f"--header-timeout: must be positive, got {seconds}"):
            check_options(ServeOptions(header_timeout=seconds), environ={"TAILORKD_SERVE_TOKEN": TOKEN})


@pytest.fixture
def model_free_app():
    options = ServeOptions(header_timeout=0.5)
    return create_app(fake_model(), options, token=TOKEN), options


def script_hashes(html: str) -> set[str]:
    return {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
            for s in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)}


def test_every_answer_carries_security_headers_and_pages_a_strict_policy(dashboard_app):
    app, options = dashboard_app
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S, headers=AUTH) as client:
        answers = {"health": client.get("/healthz"), "classify": client.post("/v1/classify", json={"texts": ["a"]}),
                   "bad": client.post("/v1/classify", content=b"{"), "missing": client.get("/nowhere"),
                   "docs": client.get("/docs"), "dashboard": client.get("/dashboard"),
                   "schema": client.get("/openapi.json")}
    for what, r in answers.items():
        assert r.status_code < 500, what
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", what
        assert r.headers["referrer-policy"] == "no-referrer", what
        policy = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'", what
        if what in ("docs", "dashboard"):  # pages: their own inline scripts by hash, nothing from elsewhere
            sources = set(policy["script-src"].split())
            assert sources == {"'self'"} | script_hashes(r.text) and len(sources) == 2, (what, policy)
            assert "http" not in r.headers["content-security-policy"] and "unsafe-eval" not in policy["script-src"]
        else:
            assert "script-src" not in policy, what


def test_docs_need_no_network(dashboard_app):
    app, options = dashboard_app
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        linked = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text)
        assert len(linked) == 3 and all(link.startswith("/docs/assets/") for link in linked), linked
        for link in linked:
            asset = client.get(link)
            assert asset.status_code == 200 and len(asset.content) > 500, link
        assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/docs/assets/index.html").status_code == 404  # only the files /docs needs
        assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not served


def test_docs_render_in_chromium_from_this_server_alone(dashboard_app):
    from selenium.webdriver.common.by import By

    app, options = dashboard_app
    driver = browser()
    driver.set_page_load_timeout(PATIENCE_S)
    try:
        with running(app, options) as (url, _):
            driver.get(f"{url}/docs")
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"), "Swagger UI to list the operations")
            shown = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
            assert {"/v1/classify", "/healthz", "/metrics", "/dashboard"} <= shown, shown
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert fetched and all(name.startswith(f"{url}/") for name in fetched), fetched
            blocked = [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
            assert blocked == [], blocked
    finally:
        driver.quit()


def test_errors_echo_only_a_bounded_excerpt_of_the_request(dashboard_app):
    app, options = dashboard_app
    key = "k" * 3_000_000
    with running(app, options) as (url, _), httpx.Client(base_url=url, timeout=PATIENCE_S, headers=AUTH) as client:
        r = client.post("/v1/classify", content=b'{"texts": ["a"], "' + key.encode() + b'": 1}')
        assert r.status_code == 422 and len(r.content) < 500, len(r.content)
        message = r.json()["error"]["message"]
        assert message.startswith("k" * 60 + "... (3000000 characters): unknown field"), message[:200]
        r = client.get("/" + "p" * 5000)
        assert r.status_code == 404 and len(r.content) < 500
        assert "(5001 characters): no such path" in r.json()["error"]["message"]
        assert client.post("/v1/classify", json={"texts": ["a"]}).status_code == 200  # and it goes on


# -- overload ----------------------------------------------------------------------------------------------
def test_an_overloaded_service_answers_503_with_retry_after_and_serves_the_queue():
    served, gate = gated(fake_model())
    options = ServeOptions(max_texts=2, max_queue=2, max_wait_ms=0)
    app = create_app(served, options, token=TOKEN)
    answers: dict[str, httpx.Response] = {}
    with running(app, options) as (url, _):
        def post(name: str, texts: list[str]) -> None:
            answers[name] = httpx.post(f"{url}/v1/classify", json={"texts": texts}, headers=AUTH, timeout=PATIENCE_S)

        held = threading.Thread(target=post, args=("held", ["a"]))
        held.start()
        wait_for(gate.entered.is_set, "the first request to hold the model")
        queued = threading.Thread(target=post, args=("queued", ["b", "c"]))
        queued.start()
        wait_for(lambda: app.state.batcher.queued == 2, "the second request to fill the queue")
        refused = httpx.post(f"{url}/v1/classify", json={"texts": ["d"]}, headers=AUTH, timeout=PATIENCE_S)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        assert httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code == 200  # alive, only busy
        gate.release.set()
        for thread in (held, queued):
            thread.join(PATIENCE_S)
    assert answers["held"].status_code == answers["queued"].status_code == 200
    assert len(answers["queued"].json()["results"]) == 2
