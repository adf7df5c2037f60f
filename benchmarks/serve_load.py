"""Load test of `aiayn serve` on loopback: N concurrent clients × M requests each.

    python benchmarks/serve_load.py --model models/bible-es-en --clients 50 --requests 20

Starts the server on a free local port (or uses --url), sends one-sentence /translate requests
(beam 4) drawn from the test split, and prints throughput, p50/p95/max latency and the error count;
the last line is JSON. All traffic stays on 127.0.0.1; the run is bounded by clients × requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def load(url: str, texts: list[str], clients: int, requests: int, beam: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0

    async def client(i: int, c: httpx.AsyncClient) -> None:
        nonlocal errors
        for j in range(requests):
            text = texts[(i * requests + j) % len(texts)]
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/translate", json={"text": text, "beam_size": beam}, timeout=300)
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]  # noqa: E731
    return {"requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(1000 * pct(0.50)),
            "p95_ms": round(1000 * pct(0.95)), "max_ms": round(1000 * latencies[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "bible-es-en"))
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from aiayn.evaluate import read_test_pairs

    texts, _ = read_test_pairs(ROOT / "data" / "bible-es-en" / "test.tsv")
    from contextlib import nullcontext

    from aiayn.serve.process import ServerProcess

    server = ServerProcess(args.model, args.threads, ["--max-texts", "64"]) if args.url is None else nullcontext()
    with server:
        url = args.url or server.url
        res = asyncio.run(load(url, texts, args.clients, args.requests, args.beam))
    print(f"{res['requests']} requests from {args.clients} clients in {res['seconds']} s: {res['requests_per_s']} req/s, "
          f"p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, max {res['max_ms']} ms, errors {res['errors']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
