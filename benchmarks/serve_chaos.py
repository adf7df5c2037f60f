"""Chaos run of `aiayn serve` on loopback: good traffic mixed with what hurts servers.

    python benchmarks/serve_chaos.py                 # the shipped model; writes benchmarks/results/serve_chaos.json

It starts the server on a free 127.0.0.1 port, records each test sentence's answer (and attention maps)
alone, then runs, all at once and bounded in count:

* small clients: one-sentence requests (beam 4), each answer compared with the sentence's answer alone;
* attention clients: `return_attention`, each map checked against its own sentence's shape and values;
* big clients: 64 long texts at beam 16 (over the work limit: 413) and 64 texts at beam 4 (accepted, decoded in slices);
* poison clients: a lone surrogate, a NUL, a text over the token limit, each beside good texts;
* slow clients: bodies dribbled in over seconds;
* oversize bodies: 5 MB;
* an overload burst: ten times the small clients at once.

It reports the small requests' p50/p99 latency alone and under chaos, answers by kind and status, wrong
answers, innocent failures (a well-formed request answered other than 200, 503 or 504), and the server's
RSS before and after. Goal: 0 wrong answers, 0 innocent failures, bounded memory, small requests' p99 not
hostage to big ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu, describe  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else float("nan")


async def chaos(url: str, port: int, sentences: list[str], rounds: int) -> dict:
    import httpx

    statuses: dict[str, Counter] = defaultdict(Counter)
    wrong: list[str] = []
    innocent: list[str] = []
    latency: dict[str, list[float]] = defaultdict(list)
    timeout = httpx.Timeout(300)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=400), timeout=timeout) as c:
        async def post(kind: str, body: dict, good: bool = True) -> httpx.Response | None:
            t0 = time.perf_counter()
            try:
                # ensure_ascii: a lone surrogate travels as the JSON escape \ud800, as a hostile client would send it
                r = await c.post(url + "/translate", content=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
            except httpx.HTTPError as e:
                statuses[kind][type(e).__name__] += 1
                if good:
                    innocent.append(f"{kind}: {type(e).__name__}")
                return None
            latency[kind].append(time.perf_counter() - t0)
            statuses[kind][r.status_code] += 1
            if good and r.status_code not in (200, 503, 504):
                innocent.append(f"{kind}: {r.status_code} {r.text[:120]}")
            return r

        # Each sentence alone: the answers every later one must equal.
        alone = {}
        for s in sentences:
            r = await post("alone", {"text": s, "return_attention": True})
            alone[s] = r.json()["translations"][0]
        base = [s for s in sentences for _ in range(1)]

        async def small(i: int, kind: str = "small") -> None:
            for j in range(rounds):
                s = base[(i * rounds + j) % len(base)]
                r = await post(kind, {"text": s})
                ok = r is not None and r.status_code == 200
                if ok and r.json()["translations"][0]["translation"] != alone[s]["translation"]:
                    wrong.append(f"{kind}: {s!r}")

        async def attention(i: int) -> None:
            for j in range(max(1, rounds // 2)):
                s = base[(i * 7 + j) % len(base)]
                r = await post("attention", {"text": s, "return_attention": True})
                if r is not None and r.status_code == 200 and r.json()["translations"][0]["attention"] != alone[s]["attention"]:
                    wrong.append(f"attention: {s!r}")

        async def big(i: int) -> None:
            long = " ".join(sentences[:6])
            await post("big_over_limit", {"texts": [long] * 64, "beam_size": 16}, good=False)
            r = await post("big_accepted", {"texts": [sentences[(i + k) % len(sentences)] for k in range(64)], "beam_size": 4})
            if r is not None and r.status_code == 200:
                for k, item in enumerate(r.json()["translations"]):
                    if item["translation"] != alone[sentences[(i + k) % len(sentences)]]["translation"]:
                        wrong.append("big_accepted")

        async def poison(i: int) -> None:
            for bad in ("la \ud800 casa", "la\x00casa", " ".join(["ñ"] * 1500)):
                r = await post("poison", {"texts": [sentences[i], bad]}, good=False)
                if r is not None and r.status_code not in (413, 422):
                    innocent.append(f"poison answered {r.status_code}")

        async def slow(i: int) -> None:
            body = json.dumps({"text": sentences[i]}).encode()
            t0 = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            for k in range(0, len(body), 8):  # 8 bytes every 50 ms
                writer.write(body[k : k + 8])
                await writer.drain()
                await asyncio.sleep(0.05)
            data = await reader.read()
            writer.close()
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
            statuses["slow_client"][status] += 1
            latency["slow_client"].append(time.perf_counter() - t0)
            if status != 200:
                innocent.append(f"slow client: {status}")
            else:
                answer = json.loads(data.split(b"\r\n\r\n", 1)[1])["translations"][0]["translation"]
                if answer != alone[sentences[i]]["translation"]:
                    wrong.append("slow client")

        async def oversize() -> None:
            t0 = time.perf_counter()
            r = await c.post(url + "/translate", content=b'{"text": "' + b"a" * (5 << 20) + b'"}',
                             headers={"content-type": "application/json"})
            statuses["oversize_body"][r.status_code] += 1
            latency["oversize_body"].append(time.perf_counter() - t0)

        # 1. small requests alone
        t0 = time.perf_counter()
        await asyncio.gather(*(small(i, "small_alone") for i in range(8)))
        alone_s = time.perf_counter() - t0
        # 2. the same small clients beside everything else
        t0 = time.perf_counter()
        await asyncio.gather(*(small(i, "small_in_chaos") for i in range(8)), *(attention(i) for i in range(4)),
                             *(big(i) for i in range(2)), *(poison(i) for i in range(3)), *(slow(i) for i in range(3)),
                             oversize(), oversize())
        chaos_s = time.perf_counter() - t0
        # 3. an overload burst: ten times the small clients at once, one request each
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(post("overload_burst", {"texts": sentences[:8], "beam_size": 4}) for _ in range(80)))
        burst_s = time.perf_counter() - t0
        retry_after = sum(1 for r in burst if r is not None and r.status_code == 503 and r.headers.get("retry-after"))
        health = (await c.get(url + "/health")).json()
    return {
        "seconds": {"small_alone": round(alone_s, 1), "chaos": round(chaos_s, 1), "overload_burst": round(burst_s, 1)},
        "small_alone_p50_ms": pct(latency["small_alone"], 0.5), "small_alone_p99_ms": pct(latency["small_alone"], 0.99),
        "small_in_chaos_p50_ms": pct(latency["small_in_chaos"], 0.5),
        "small_in_chaos_p99_ms": pct(latency["small_in_chaos"], 0.99),
        "slow_client_p50_ms": pct(latency["slow_client"], 0.5), "big_accepted_p50_ms": pct(latency["big_accepted"], 0.5),
        "oversize_body_p50_ms": pct(latency["oversize_body"], 0.5),
        "statuses": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()},
        "requests": sum(sum(v.values()) for v in statuses.values()),
        "wrong_answers": len(wrong), "wrong_examples": wrong[:5],
        "innocent_failures": len(innocent), "innocent_examples": innocent[:5],
        "overload_503_with_retry_after": retry_after, "health_after": health,
    }


def _combine(rounds: list[dict]) -> dict:
    """The last round's figures, with counts summed over every round."""
    res = dict(rounds[-1])
    res["rounds"] = len(rounds)
    for key in ("requests", "wrong_answers", "innocent_failures", "overload_503_with_retry_after"):
        res[key] = sum(r[key] for r in rounds)
    statuses: dict[str, Counter] = defaultdict(Counter)
    for r in rounds:
        for kind, st in r["statuses"].items():
            statuses[kind].update(st)
    res["statuses"] = {k: dict(v) for k, v in statuses.items()}
    res["wrong_examples"] = [e for r in rounds for e in r["wrong_examples"]][:5]
    res["innocent_examples"] = [e for r in rounds for e in r["innocent_examples"]][:5]
    res["small_in_chaos_p99_ms_each_round"] = [r["small_in_chaos_p99_ms"] for r in rounds]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "bible-es-en"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=40, help="test sentences used as traffic")
    ap.add_argument("--rounds", type=int, default=10, help="requests per small client")
    ap.add_argument("--max-queue-work", type=int, default=20000, help="the server's queue bound (small, to reach overload)")
    ap.add_argument("--max-batch-work", type=int, default=4096, help="the server's work per batch")
    ap.add_argument("--repeat", type=int, default=6, help="chaos rounds against the same server (RSS after each)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_chaos.json"))
    args = ap.parse_args()
    from aiayn.evaluate import read_test_pairs

    sentences, _ = read_test_pairs(ROOT / "data" / "bible-es-en" / "test.tsv", limit=args.sentences)
    from aiayn.serve.process import ServerProcess

    server = ServerProcess(args.model, args.threads, ["--max-queue-work", str(args.max_queue_work),
                                                      "--max-batch-work", str(args.max_batch_work)])
    with server:
        rss = [round(rss_mb(server.proc.pid))]
        rounds = []
        for _ in range(args.repeat):
            rounds.append(asyncio.run(chaos(server.url, server.port, sentences, args.rounds)))
            rss.append(round(rss_mb(server.proc.pid)))
    res = _combine(rounds)
    res["rss_mb_before"], res["rss_mb_after"], res["rss_mb_after_each_round"] = rss[0], rss[-1], rss[1:]
    res = {"benchmark": "serve_chaos", "machine": cpu(), "threads": args.threads, "model": Path(args.model).name,
           "max_queue_work": args.max_queue_work, "max_batch_work": args.max_batch_work, **res}
    print(f"CPU: {describe()}, {args.threads} threads")
    print(f"{res['rounds']} rounds, {res['requests']} requests: wrong answers {res['wrong_answers']}, "
          f"innocent failures {res['innocent_failures']}")
    print(f"small requests p50/p99 (last round): alone {res['small_alone_p50_ms']}/{res['small_alone_p99_ms']} ms, "
          f"in chaos {res['small_in_chaos_p50_ms']}/{res['small_in_chaos_p99_ms']} ms; a big request (64 texts) "
          f"{res['big_accepted_p50_ms']} ms")
    for kind, st in res["statuses"].items():
        print(f"  {kind:<16} {st}")
    print(f"RSS {res['rss_mb_before']} → {res['rss_mb_after_each_round']} MB after each round; overload 503s with Retry-After: "
          f"{res['overload_503_with_retry_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: res[k] for k in ("wrong_answers", "innocent_failures", "small_in_chaos_p99_ms", "rss_mb_after")}))


if __name__ == "__main__":
    main()
