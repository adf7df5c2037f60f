"""The REST API, in process (FastAPI's test client), on a small model trained on the toy corpus."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from aiayn.serve.app import Limits, create_app
from aiayn.train.loop import load_run_config, train


@pytest.fixture(scope="module")
def model_dir(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("servemodel")
    run = load_run_config(None, {"model": {"preset": "tiny", "d_model": 32, "d_ff": 64},
                                 "train": {"data": str(toy_data), "out": str(out), "max_steps": 3, "warmup": 5,
                                           "max_tokens": 300, "eval_bleu_sentences": 0, "threads": 1}})
    train(run)
    return out / "checkpoints" / "step_0000003"


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(model_dir, Limits(max_texts=4, max_chars=100, max_beam=8))) as c:
        yield c


def test_health_info_page_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queued_requests"] == 0 and not health["draining"]
    assert client.get("/ready").json()["ready"]
    info = client.get("/info").json()
    assert info["arch"] == "encoder-decoder" and info["parameters"] > 0 and info["vocab_size"] > 4
    # the machine and the CPU fast paths the server decodes with (aiayn.accel), for whoever runs it
    from aiayn.accel import choices

    assert info["device"] == "cpu" and info["cpu"]["cores"] >= 1 and isinstance(info["cpu"]["features"], list)
    assert any("PreallocatedKVCache" in line for line in info["accelerated"]) == choices().preallocated_cache
    page = client.get("/")
    assert page.status_code == 200 and "Attention" in page.text and "http" not in page.text.split("<script>")[1][:200]
    assert client.get("/docs").status_code == 200


def test_translate_one_and_many_with_attention(client, model_dir):
    from aiayn.decode.translate import DecodeConfig, Translator
    from aiayn.train.checkpoint import load_model_dir

    model, vocab, _ = load_model_dir(model_dir)
    r = client.post("/translate", json={"text": "la casa", "beam_size": 2})
    assert r.status_code == 200
    assert r.json()["translations"][0]["translation"] == Translator(model, vocab, DecodeConfig(beam=2)).translate(["la casa"])[0]
    r = client.post("/translate", json={"texts": ["la casa", "el de", ""], "beam_size": 4, "nbest": 2, "return_attention": True})
    items = r.json()["translations"]
    assert len(items) == 3 and len(items[0]["nbest"]) == 2
    att = items[0]["attention"]
    assert att["src_tokens"][-1] == "</s>" and len(att["cross"]) == 2  # layers
    assert len(att["cross"][0][0]) == len(att["tgt_tokens"])  # (heads, T, S)


def test_the_stopping_rule_reaches_the_search(client, monkeypatch):
    import aiayn.decode.translate as translate

    seen, search = [], translate.beam_search
    monkeypatch.setattr(translate, "beam_search", lambda *a: seen.append(a[3:]) or search(*a))
    for stopping in ("count", "bound"):
        assert client.post("/translate", json={"text": "la casa", "beam_size": 3, "stopping": stopping}).status_code == 200
    assert client.post("/translate", json={"text": "la casa", "beam_size": 2}).status_code == 200
    assert seen == [(3, 0.6, 1, "count"), (3, 0.6, 1, "bound"), (2, 0.6, 1, "bound")]  # beam, α, nbest, stopping


def test_bad_requests_get_clear_answers(client):
    assert client.post("/translate", content=b"{not json").status_code == 422
    assert client.post("/translate", json={}).status_code == 422
    assert client.post("/translate", json={"text": "a", "texts": ["b"]}).status_code == 422
    assert client.post("/translate", json={"text": "a", "beam_size": 2, "nbest": 3}).status_code == 422
    r = client.post("/translate", json={"texts": ["a"] * 5})
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]
    assert client.post("/translate", json={"text": "x" * 101}).status_code == 413
    assert client.post("/translate", json={"text": "a", "beam_size": 9}).status_code == 422
    assert client.post("/translate", json={"text": "a", "stopping": "never"}).status_code == 422
    assert client.post("/generate", json={"prompt": "a"}).status_code == 400
    assert client.get("/health").status_code == 200  # still serving


def test_concurrent_requests_are_batched_and_answered_in_order(model_dir):
    import httpx

    async def main():
        app = create_app(model_dir, Limits(batch_wait_ms=50))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                texts = [f"la casa {w}" for w in ("de", "que", "y", "el", "los", "se")]
                alone = [(await c.post("/translate", json={"text": t})).json()["translations"][0]["translation"] for t in texts]
                before = app.state.service.batches
                rs = await asyncio.gather(*(c.post("/translate", json={"text": t}) for t in texts))
                together = [r.json()["translations"][0]["translation"] for r in rs]
                return alone, together, app.state.service.batches - before

    alone, together, batches = asyncio.run(main())
    assert together == alone
    assert batches < len(alone)  # several requests shared a batch


# --- isolation: no request spoils another (issue 14) ---------------------------------------------
async def _with_client(model_dir, limits, body):
    import httpx

    app = create_app(model_dir, limits)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c:
            return await body(c, app.state.service)


SENTENCES = ["la casa", "el de que y a en los se del las un por con no una su para", "y", "los se del",
             "de que y a en los se del las un por con no una su para es al lo como más o pero sus le ha me"]


def test_attention_maps_belong_to_their_own_sentence_under_concurrency(model_dir):
    """Defect: recording attention flipped a flag on the shared model, so concurrent decoding broke the
    maps (HTTP 500, or another sentence's maps). Every map must have its own sentence's shape and values."""

    async def body(c, service):
        solo = {}
        for t in SENTENCES:
            solo[t] = (await c.post("/translate", json={"text": t, "return_attention": True})).json()["translations"][0]
        reqs = []
        for k in range(6):
            for t in SENTENCES:
                reqs.append(c.post("/translate", json={"text": t, "return_attention": True}))
                reqs.append(c.post("/translate", json={"texts": SENTENCES, "beam_size": 2 + k % 3}))
        return solo, await asyncio.gather(*reqs)

    solo, responses = asyncio.run(_with_client(model_dir, Limits(batch_wait_ms=1), body))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    checked = 0
    for r in responses:
        for item in r.json()["translations"]:
            if "attention" not in item:
                continue
            att, ref = item["attention"], solo[item["source"]]["attention"]
            s, t = len(att["src_tokens"]), len(att["tgt_tokens"])
            for layer in att["encoder"]:
                assert [len(layer[0]), len(layer[0][0])] == [s, s]
            for layer in att["cross"]:
                assert [len(layer[0]), len(layer[0][0])] == [t, s]
            assert att == ref
            checked += 1
    assert checked == 6 * len(SENTENCES)


def test_a_bad_text_fails_only_its_own_request(model_dir):
    """Defect: a text within the character limit but over the token limit, or with a lone surrogate,
    raised inside the batched decode and every request of that batch got HTTP 500."""
    limits = Limits(batch_wait_ms=50, max_tokens=40, max_chars=2000)

    async def body(c, service):
        long_in_tokens = " ".join(["ñ"] * 100)  # 199 characters, far more tokens than 40
        assert len(service.vocab.encode(long_in_tokens)) > 40
        good = [c.post("/translate", json={"text": t}) for t in SENTENCES]
        bad = [c.post("/translate", json={"texts": ["la casa", long_in_tokens]}),
               c.post("/translate", content=b'{"text": "la \\ud800 casa"}', headers={"content-type": "application/json"}),
               c.post("/translate", json={"text": "la\x00casa"})]
        rs = await asyncio.gather(*good, *bad)
        alone = [(await c.post("/translate", json={"text": t})).json() for t in SENTENCES]
        return rs[: len(good)], rs[len(good):], alone

    good, bad, alone = asyncio.run(_with_client(model_dir, limits, body))
    assert [r.status_code for r in good] == [200] * len(SENTENCES)
    assert [r.json()["translations"] for r in good] == [a["translations"] for a in alone]
    assert [r.status_code for r in bad] == [413, 422, 422]
    assert "text 1 has" in bad[0].json()["detail"] and "tokens" in bad[0].json()["detail"]
    assert "surrogate" in bad[1].json()["detail"] and "NUL" in bad[2].json()["detail"]


def test_small_requests_are_not_stuck_behind_a_big_one(model_dir):
    """Defect: one large in-limit request held the decoder while one-word requests queued behind it.
    Large requests are now decoded in slices and small ones go first."""
    limits = Limits(batch_wait_ms=5, max_batch_work=200, max_texts=64)

    async def body(c, service):
        done: list[str] = []

        async def post(name, payload):
            r = await c.post("/translate", json=payload)
            done.append(name)
            return r

        big = asyncio.create_task(post("big", {"texts": SENTENCES[-1:] * 60, "beam_size": 16}))
        await asyncio.sleep(0.05)
        small = [asyncio.create_task(post(f"small{i}", {"text": "la casa", "beam_size": 1})) for i in range(3)]
        rs = await asyncio.gather(big, *small)
        return done, rs, service.batches

    done, rs, batches = asyncio.run(_with_client(model_dir, limits, body))
    assert all(r.status_code == 200 for r in rs) and len(rs[0].json()["translations"]) == 60
    assert done[-1] == "big", done
    assert batches > 3


def test_work_and_queue_are_bounded_with_clear_answers(model_dir):
    async def body(c, service):
        too_much = await c.post("/translate", json={"texts": [SENTENCES[-1]] * 40, "beam_size": 16})
        oversize = await c.post("/translate", content=b'{"text": "' + b"a" * 30000 + b'"}',
                                headers={"content-type": "application/json"})
        flood = await asyncio.gather(*(c.post("/translate", json={"texts": SENTENCES, "beam_size": 4}) for _ in range(30)))
        seed = await c.post("/generate", json={"prompt": "a", "seed": 2**63})
        return too_much, oversize, flood, seed, (await c.get("/health")).json()

    limits = Limits(max_request_work=5000, max_queue_work=1200, max_body_bytes=20000, batch_wait_ms=20)
    too_much, oversize, flood, seed, health = asyncio.run(_with_client(model_dir, limits, body))
    assert too_much.status_code == 413 and "work" in too_much.json()["detail"]
    assert oversize.status_code == 413 and "body" in oversize.json()["detail"]
    codes = sorted(r.status_code for r in flood)
    assert set(codes) == {200, 503}, codes
    assert all(r.headers.get("retry-after", "").isdigit() for r in flood if r.status_code == 503)
    assert seed.status_code == 422
    assert health["queued_requests"] == 0


def test_a_request_past_its_deadline_gets_504(model_dir):
    async def body(c, service):
        return await c.post("/translate", json={"texts": SENTENCES * 4, "beam_size": 8})

    r = asyncio.run(_with_client(model_dir, Limits(timeout_s=0.001, batch_wait_ms=50), body))
    assert r.status_code == 504 and "not answered" in r.json()["detail"]


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(tmp_path):
    """`aiayn serve` under SIGTERM (what systemd, Docker and Kubernetes send): the request being decoded
    is answered in full, new connections are refused, the process exits 0."""
    import json
    import signal
    import threading
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from aiayn.serve.process import ServerProcess

    root = Path(__file__).resolve().parents[1]
    with ServerProcess(root / "models" / "bible-es-en") as server:
        url, proc = server.url, server.proc
        texts = [f"Y dijo Dios: Sea la luz número {i}; y fue la luz, y vio Dios que la luz era buena." for i in range(48)]
        answer: dict = {}

        def long_request() -> None:
            req = urllib.request.Request(url + "/translate", json.dumps({"texts": texts, "beam_size": 16}).encode(),
                                         {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                answer["status"], answer["body"] = r.status, json.loads(r.read())
            answer["at"] = time.time()

        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the request is being decoded
            health = json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())
            if health["unanswered_requests"]:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        signalled = time.time()
        time.sleep(0.3)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(url + "/health", timeout=5)
        t.join(timeout=300)
        assert answer.get("status") == 200 and len(answer["body"]["translations"]) == len(texts)
        assert answer["at"] > signalled + 0.3  # it was in flight when the signal came
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
