"""``tailorkd serve``: the run's trained student behind an HTTP API (FastAPI + uvicorn).

    command.py    the `tailorkd serve` command and its options (added to the CLI by add_serve_command)
    predictor.py  Predictor (texts -> [N, M] probabilities) and ServedModel; the PyTorch student's predictor
    batcher.py    DynamicBatcher: texts of concurrent requests batched into one worker thread
    app.py        create_app: /v1/classify, /healthz, /metrics (Prometheus), /docs; auth and limits
    security.py   security headers, page CSPs, the token redacted from logs, bounded echoes (docs/security.md)
    server.py     ServeOptions, check_options, serve (uvicorn on a bound socket, a header deadline, graceful
                  shutdown)

Only ``predictor`` and ``batcher`` import without FastAPI; the CLI imports the rest when ``serve`` runs.
"""
