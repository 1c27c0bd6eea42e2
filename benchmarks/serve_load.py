"""Load on `tailorkd serve`: N concurrent clients over loopback, with bad requests mixed in.

The service runs as `tailorkd serve` in its own process (bearer token, the default limits); this script is the
clients. For each client count (default 1, 8, 32) it sends a bounded number of requests (and stops starting new
ones after --max-seconds): most are good (1 to 4 texts of the run's test split), a share are bad (malformed
JSON, not UTF-8, wrong types, no texts, too many texts, a text too long, no token, a wrong token). Every good
answer is compared with the same student's predictions made directly in this process (labels equal,
probabilities within 1e-5), every bad one must be a 4xx, and /healthz must be healthy at the end.

Baselines measured in the same run: the student called directly in this process on batches of the service's
max batch size (`direct`), and the one-client level. Reported: requests and texts per second, their ratio to
both baselines, latency p50 / p95 / p99 of good requests, mean texts and requests per model call (from the
service's own /metrics), dropped / wrong / not-4xx counts.

    .venv/bin/python benchmarks/serve_load.py                     # the demo run's student (MiniLM-L6 + LoRA)
    .venv/bin/python benchmarks/serve_load.py --clients 1,8,32 --requests 300 --output /tmp/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tailorkd.resources import describe_machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "bbc-news" / "gemma3-270m_to_minilm-l6_lora.yaml"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "serve_load.json"
TOLERANCE = 1e-5


def bad_requests(max_texts: int, max_chars: int, token: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, httpx request kwargs) of requests the service must refuse with a 4xx."""
    auth = {"Authorization": f"Bearer {token}"}
    return [
        ("malformed_json", {"content": b'{"texts": ["a",', "headers": auth}),
        ("not_utf8", {"content": b'{"texts": ["caf\xe9"]}', "headers": auth}),
        ("wrong_type", {"json": {"texts": [1, 2]}, "headers": auth}),
        ("empty_list", {"json": {"texts": []}, "headers": auth}),
        ("too_many_texts", {"json": {"texts": ["a"] * (max_texts + 1)}, "headers": auth}),
        ("text_too_long", {"json": {"texts": ["a" * (max_chars + 1)]}, "headers": auth}),
        ("no_token", {"json": {"texts": ["a"]}, "headers": {}}),
        ("wrong_token", {"json": {"texts": ["a"]}, "headers": {"Authorization": "Bearer not-the-token"}}),
    ]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def scrape(client: httpx.Client, token: str) -> dict[str, float]:
    """The batch histograms' sums and counts from the service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    wanted = {"tailorkd_serve_batch_texts_sum", "tailorkd_serve_batch_texts_count",
              "tailorkd_serve_batch_requests_sum"}
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name in wanted}


def run_level(url: str, token: str, clients: int, plan: list[tuple[str, Any]], reference: dict[str, np.ndarray],
              labels: list[str], max_seconds: float) -> dict[str, Any]:
    """Send ``plan`` (("good", texts) or ("bad", (kind, kwargs))) from ``clients`` threads."""
    auth = {"Authorization": f"Bearer {token}"}
    lock = threading.Lock()
    todo = iter(plan)
    good_latencies: list[float] = []
    counts = {"good_sent": 0, "good_texts": 0, "dropped": 0, "wrong": 0, "bad_sent": 0, "bad_4xx": 0, "not_4xx": 0}
    dropped_statuses: list[int] = []
    bad_statuses: dict[str, list[int]] = {}
    start = time.perf_counter()
    deadline = start + max_seconds

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                kind, payload = item
                if kind == "good":
                    sent = time.perf_counter()
                    try:
                        r = client.post("/v1/classify", json={"texts": payload}, headers=auth)
                        latency = (time.perf_counter() - sent) * 1000
                        ok = r.status_code == 200
                        try:
                            right = ok and all(
                                res["label"] == labels[int(np.argmax(reference[t]))]
                                and np.allclose([res["probabilities"][n] for n in labels], reference[t], atol=TOLERANCE)
                                for res, t in zip(r.json()["results"], payload, strict=True))
                        except (ValueError, KeyError):  # not JSON, or results missing or of another shape
                            right = False
                        status = r.status_code
                    except httpx.HTTPError:
                        ok, right, latency, status = False, False, None, 0
                    with lock:
                        counts["good_sent"] += 1
                        counts["good_texts"] += len(payload)
                        if not ok:
                            counts["dropped"] += 1
                            dropped_statuses.append(status)
                        elif not right:
                            counts["wrong"] += 1
                        if ok:
                            good_latencies.append(latency)
                else:
                    name, kwargs = payload
                    try:
                        status = client.post("/v1/classify", **kwargs).status_code
                    except httpx.HTTPError:
                        status = 0
                    with lock:
                        counts["bad_sent"] += 1
                        counts["bad_4xx" if 400 <= status < 500 else "not_4xx"] += 1
                        bad_statuses.setdefault(name, []).append(status)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    good_ok = counts["good_sent"] - counts["dropped"]
    return {
        "clients": clients,
        "seconds": round(seconds, 2),
        "stopped_by_time": counts["good_sent"] + counts["bad_sent"] < len(plan),
        "good": {"sent": counts["good_sent"], "texts": counts["good_texts"], "dropped": counts["dropped"],
                 "dropped_statuses": sorted(set(dropped_statuses)), "wrong": counts["wrong"]},
        "bad": {"sent": counts["bad_sent"], "answered_4xx": counts["bad_4xx"], "not_4xx": counts["not_4xx"],
                "statuses": {k: sorted(set(v)) for k, v in sorted(bad_statuses.items())}},
        "requests_per_second": round(good_ok / seconds, 2),
        "texts_per_second": round(counts["good_texts"] / seconds, 2),
        "latency_ms": {"p50": percentile(good_latencies, 50), "p95": percentile(good_latencies, 95),
                       "p99": percentile(good_latencies, 99),
                       "mean": round(float(np.mean(good_latencies)), 2) if good_latencies else None},
    }


def start_server(recipe: str, token: str, args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TAILORKD_SERVE_TOKEN": token}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tailorkd", "serve", recipe, "--port", "0",
                                 "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tailorkd serve stopped:\n{log_path.read_text()}")
        found = re.search(r"on (http://127\.0\.0\.1:\d+);", log_path.read_text())
        if found:
            url = found.group(1)
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("tailorkd serve did not become healthy in 10 minutes")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="a recipe whose run has a trained student")
    parser.add_argument("--clients", default="1,8,32", help="concurrent client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=300, help="requests per client count (good and bad)")
    parser.add_argument("--max-seconds", type=float, default=90, help="stop starting requests after this, per level")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of bad requests")
    parser.add_argument("--texts-per-request", default="1,4", help="min,max texts of a good request")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--direct-texts", type=int, default=96, help="texts of the direct baseline around a level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    client_counts = [int(c) for c in args.clients.split(",")]
    low, high = (int(v) for v in args.texts_per_request.split(","))

    from tailorkd.recipe import load_recipe
    from tailorkd.serve.app import ServeOptions
    from tailorkd.serve.predictor import load_served_model
    from tailorkd.stages.prepare import load_data

    recipe = load_recipe(args.recipe)
    data = load_data(recipe)
    options = ServeOptions()
    # Texts within the service's limit (a BBC article may be longer; the student reads its first 400 characters).
    texts = [t for t in dict.fromkeys(r["text"] for r in (data.rows("test") or data.rows("pool")))
             if len(t) <= options.max_chars]
    model = load_served_model(recipe)
    model.predict(texts[:2])  # warm-up

    def direct(part: list[str]) -> tuple[float, np.ndarray]:
        """The direct baseline: the same predictor in this process, on batches of the service's size."""
        start = time.perf_counter()
        probs = np.concatenate([model.predict(part[i : i + args.max_batch_size])
                                for i in range(0, len(part), args.max_batch_size)])
        return len(part) / (time.perf_counter() - start), probs

    _, probs = direct(texts)
    reference = dict(zip(texts, probs))
    burst = texts[: args.direct_texts]

    token = secrets.token_urlsafe(24)
    bad = bad_requests(options.max_texts, options.max_chars, token)
    rng = random.Random(args.seed)
    settings = {"clients": client_counts, "requests_per_level": args.requests,
                "max_seconds_per_level": args.max_seconds, "bad_share": args.bad_share,
                "texts_per_request": [low, high], "max_batch_size": args.max_batch_size,
                "max_wait_ms": args.max_wait_ms, "distinct_texts": len(texts), "tolerance": TOLERANCE}
    report: dict[str, Any] = {"machine": describe_machine(packages=("fastapi", "uvicorn")), "recipe": str(args.recipe),
                              "student": None, "settings": settings, "direct_texts_per_level": len(burst)}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "serve.log"
        proc, url = start_server(str(args.recipe), token, args, log_path)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                report["student"] = client.post("/v1/classify", json={"texts": texts[:1]},
                                                headers={"Authorization": f"Bearer {token}"}).json()["model"]
                levels = []
                for clients in client_counts:
                    n_bad = round(args.requests * args.bad_share)  # an exact share, at shuffled places
                    plan = [("bad", bad[i % len(bad)]) for i in range(n_bad)] + [
                        ("good", rng.sample(texts, rng.randint(low, high))) for _ in range(args.requests - n_bad)]
                    rng.shuffle(plan)
                    direct_before, _ = direct(burst)
                    before = scrape(client, token)
                    level = run_level(url, token, clients, plan, reference, recipe.task.label_names,
                                      args.max_seconds)
                    after = scrape(client, token)
                    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
                    calls = delta.get("tailorkd_serve_batch_texts_count", 0)
                    if calls:
                        level["model_calls"] = int(calls)
                        level["mean_texts_per_call"] = round(delta["tailorkd_serve_batch_texts_sum"] / calls, 2)
                        level["mean_requests_per_call"] = round(delta["tailorkd_serve_batch_requests_sum"] / calls, 2)
                    direct_after, _ = direct(burst)
                    level["direct_texts_per_second"] = round((direct_before + direct_after) / 2, 2)
                    level["texts_per_second_vs_direct"] = round(level["texts_per_second"]
                                                                / level["direct_texts_per_second"], 3)
                    levels.append(level)
                for level in levels:
                    level["texts_per_second_vs_1_client"] = round(level["texts_per_second"]
                                                                  / levels[0]["texts_per_second"], 3)
                report["levels"] = levels
                health = client.get("/healthz")
                report["healthy_at_end"] = health.status_code == 200 and health.json()["status"] == "ok"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    report["definitions"] = {
        "direct_texts_per_second": "the student called in this process on batches of max_batch_size texts (no "
                                   "HTTP; the server idle), right before and after the level: the mean of both",
        "texts_per_second": "texts of good requests answered / the level's wall time (bad requests also took time)",
        "latency_ms": "client-side wall time of good requests that got a 200",
        "dropped": "good requests without a 200", "wrong": "200s whose labels or probabilities differ from direct",
        "mean_texts_per_call": "texts per model call in the level, from the service's batch histogram",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    columns = ["clients", "req/s", "texts/s", "direct texts/s", "vs direct", "vs 1 client", "p50 ms", "p95 ms",
               "p99 ms", "texts/call", "req/call", "good", "dropped", "wrong", "bad", "bad not 4xx"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for lv in report["levels"]:
        lat = lv["latency_ms"]
        cells = [lv["clients"], lv["requests_per_second"], lv["texts_per_second"], lv["direct_texts_per_second"],
                 lv["texts_per_second_vs_direct"], lv["texts_per_second_vs_1_client"], lat["p50"], lat["p95"],
                 lat["p99"], lv.get("mean_texts_per_call"), lv.get("mean_requests_per_call"), lv["good"]["sent"],
                 lv["good"]["dropped"], lv["good"]["wrong"], lv["bad"]["sent"], lv["bad"]["not_4xx"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"healthy at the end: {report['healthy_at_end']}; -> {args.output}")
    return report


if __name__ == "__main__":
    main()
