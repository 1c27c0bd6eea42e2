"""``tailorkd serve``: the command and its options (the CLI adds it with ``add_serve_command``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from tailorkd.errors import TailorkdError


def serve(recipe: str, overrides: list[str], host: str = "127.0.0.1", port: int = 8000, no_auth: bool = False,
          token_env: str = "TAILORKD_SERVE_TOKEN", max_batch_size: int = 32, max_wait_ms: float = 5.0,
          max_queue: int = 1024, max_texts: int = 64, max_chars: int = 10_000, max_body_bytes: int = 4 * 1024 * 1024,
          graceful_timeout: float = 30.0, access_log: bool = False, signals: str | None = None,
          precision: str = "int8", body_timeout: float = 30.0, header_timeout: float = 10.0) -> None:
    """Serve a trained student over HTTP until SIGTERM / SIGINT (FastAPI + uvicorn): RECIPE's run (the
    PyTorch student), or a `tailorkd export` folder (its ONNX graph in ONNX Runtime, --precision int8 or fp32:
    the fast way on CPUs).

    POST /v1/classify with {"texts": ["...", ...]} answers per text its label, calibrated confidence, severity
    and class probabilities, with the model's name and version and the request's latency. GET /healthz (no
    token), GET /metrics (Prometheus), GET /docs (OpenAPI). Clients send "Authorization: Bearer TOKEN", the
    token being the value of $TAILORKD_SERVE_TOKEN (--token-env names another variable); --no-auth turns
    that off and is only allowed on a loopback --host. Texts of concurrent requests are batched into one
    model call (--max-batch-size texts, the first waiting at most --max-wait-ms for company). On SIGTERM /
    SIGINT in-flight requests finish (up to --graceful-timeout seconds). The service keeps no state: run
    several replicas behind a load balancer. GET /dashboard shows the signals of --signals (default for a
    recipe: the run's signals/ folder, as `tailorkd signals` writes it); in a browser, open
    /dashboard?token=TOKEN once.
    """
    try:
        from tailorkd.serve.app import ServeOptions
        from tailorkd.serve.predictor import load_exported_model, load_served_model
        from tailorkd.serve.server import run_service
    except ImportError as exc:  # the web packages are dependencies, but a trimmed install may lack them
        raise TailorkdError(f"tailorkd serve needs its web packages ({exc.name} is missing): pip install fastapi "
                            "uvicorn prometheus-client swagger-ui-bundle-v2") from None
    from tailorkd.run_dir import RunDir

    options = ServeOptions(host=host, port=port, auth=not no_auth, token_env=token_env,
                           max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes,
                           graceful_timeout=graceful_timeout, access_log=access_log, body_timeout=body_timeout,
                           header_timeout=header_timeout, signals_dir=Path(signals) if signals else None)
    if Path(recipe).is_dir():  # an export folder
        if overrides:
            raise TailorkdError(f"{recipe}: an export folder takes no recipe overrides ({overrides[0]})")
        run_service(lambda: load_exported_model(recipe, precision, max_batch_size), options)
        return
    from tailorkd.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    options.signals_dir = options.signals_dir or RunDir(loaded).signals_dir
    run_service(lambda: load_served_model(loaded), options)


def add_serve_command(sub: Any, help_of: Callable[[Callable[..., Any]], tuple[str, str]]) -> None:
    """Add ``serve`` to the CLI's subcommands ``sub`` (an argparse subparsers action); ``help_of(fn)``: the
    short and long help the CLI makes of a command's docstring."""
    short, long = help_of(serve)
    sv = sub.add_parser("serve", help=short, description=long, formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("recipe", metavar="RECIPE_OR_EXPORT",
                    help="a recipe YAML (its run holds the trained student) or a `tailorkd export` folder")
    sv.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free one, printed)")
    sv.add_argument("--no-auth", action="store_true", help="no bearer token (only on a loopback --host)")
    sv.add_argument("--token-env", default="TAILORKD_SERVE_TOKEN", metavar="NAME",
                    help="the environment variable holding the bearer token (default: TAILORKD_SERVE_TOKEN)")
    sv.add_argument("--max-batch-size", type=int, default=32, metavar="N", help="texts per model call (default: 32)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                    help="how long a batch's first text waits for more (default: 5)")
    sv.add_argument("--max-queue", type=int, default=1024, metavar="N",
                    help="texts waiting for the model before requests get 503 (default: 1024)")
    sv.add_argument("--max-texts", type=int, default=64, metavar="N", help="texts per request (default: 64)")
    sv.add_argument("--max-chars", type=int, default=10_000, metavar="N", help="characters per text (default: 10000)")
    sv.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                    help="request body size (default: 4194304)")
    sv.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                    help="seconds in-flight requests get to finish after SIGTERM / SIGINT (default: 30)")
    sv.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                    help="seconds a request's body may take to arrive before a 408 (default: 30)")
    sv.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                    help="seconds a request's line and headers may take to arrive before a 408 (default: 10)")
    sv.add_argument("--access-log", action="store_true",
                    help="log every request (uvicorn's access log; the token is redacted)")
    sv.add_argument("--signals", metavar="DIR",
                    help="the signals folder GET /dashboard shows (default: <output_dir>/signals)")
    sv.add_argument("--precision", choices=["int8", "fp32"], default="int8",
                    help="an export's ONNX graph to run (default: int8)")
    sv.set_defaults(func=serve)
