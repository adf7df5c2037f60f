"""The REST API, in process (FastAPI's test client), on a small model trained on the toy corpus."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from aiayn.serve.app import Limits, create_app  # noqa: E402
from aiayn.train.loop import load_run_config, train  # noqa: E402


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
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["arch"] == "encoder-decoder" and info["parameters"] > 0 and info["vocab_size"] > 4
    page = client.get("/")
    assert page.status_code == 200 and "Attention" in page.text and "http" not in page.text.split("<script>")[1][:200]
    assert client.get("/docs").status_code == 200


def test_translate_one_and_many_with_attention(client):
    r = client.post("/translate", json={"text": "la casa", "beam_size": 2})
    assert r.status_code == 200 and isinstance(r.json()["translations"][0]["translation"], str)
    r = client.post("/translate", json={"texts": ["la casa", "el de", ""], "beam_size": 4, "nbest": 2, "return_attention": True})
    items = r.json()["translations"]
    assert len(items) == 3 and len(items[0]["nbest"]) == 2
    att = items[0]["attention"]
    assert att["src_tokens"][-1] == "</s>" and len(att["cross"]) == 2  # layers
    assert len(att["cross"][0][0]) == len(att["tgt_tokens"])  # (heads, T, S)


def test_bad_requests_get_clear_answers(client):
    assert client.post("/translate", content=b"{not json").status_code == 422
    assert client.post("/translate", json={}).status_code == 422
    assert client.post("/translate", json={"text": "a", "texts": ["b"]}).status_code == 422
    assert client.post("/translate", json={"text": "a", "beam_size": 2, "nbest": 3}).status_code == 422
    r = client.post("/translate", json={"texts": ["a"] * 5})
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]
    assert client.post("/translate", json={"text": "x" * 101}).status_code == 413
    assert client.post("/translate", json={"text": "a", "beam_size": 9}).status_code == 422
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
