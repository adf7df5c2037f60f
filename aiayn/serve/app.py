"""``aiayn serve``: a REST API and a web page over one model (FastAPI + uvicorn).

Requests that arrive within a short window are decoded together (dynamic batching): a single
worker collects them from a queue, groups those with the same search settings, runs each group as
one batch in a worker thread, and answers each request with its own results. The output of a
sentence does not depend on the batch it was decoded in, so batching changes only the speed.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator

STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    max_texts: int = 64  # texts per request
    max_chars: int = 2000  # characters per text
    max_beam: int = 16
    max_new_tokens: int = 1000
    batch_wait_ms: float = 10.0  # how long the batcher waits for more requests
    max_batch_texts: int = 64


class TranslateRequest(BaseModel):
    text: str | None = Field(None, description="one text (or give `texts`)")
    texts: list[str] | None = Field(None, description="several texts")
    beam_size: int = Field(4, ge=1, le=64)
    nbest: int = Field(1, ge=1, le=64)
    alpha: float = Field(0.6, ge=0.0, le=5.0)
    return_attention: bool = False

    @model_validator(mode="after")
    def one_of(self) -> "TranslateRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        if self.nbest > self.beam_size:
            raise ValueError("nbest cannot exceed beam_size")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class GenerateRequest(BaseModel):
    prompt: str = ""
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None


@dataclass
class _Job:
    texts: list[str]
    key: tuple  # search settings: jobs with the same key share a batch
    future: asyncio.Future
    t0: float = field(default_factory=time.perf_counter)


class Service:
    """The model, its vocabulary and the dynamic batcher."""

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, threads: int = 0) -> None:
        from ..model import count_parameters
        from ..runtime import keep_freed_memory
        from ..train.checkpoint import load_model_dir

        keep_freed_memory()
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.model, self.vocab, self.config = load_model_dir(model_dir)
        self.arch = self.config["model"].get("arch", "encoder-decoder")
        self.n_params = count_parameters(self.model)
        self.limits = limits or Limits()
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.lock = asyncio.Lock()  # one model call at a time
        self.batches = 0
        self.worker: asyncio.Task | None = None

    # --- the batcher ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            job = await self.queue.get()
            jobs = [job]
            deadline = time.perf_counter() + self.limits.batch_wait_ms / 1000
            n = len(job.texts)
            while n < self.limits.max_batch_texts:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                jobs.append(nxt)
                n += len(nxt.texts)
            groups: dict[tuple, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for key, group in groups.items():
                await self._run_group(key, group)

    async def _run_group(self, key: tuple, group: list[_Job]) -> None:
        texts = [t for j in group for t in j.texts]
        try:
            results = await asyncio.to_thread(self._translate, texts, *key)
        except Exception as e:  # noqa: BLE001 - answer every waiting request, keep serving
            for j in group:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.batches += 1
        i = 0
        for j in group:
            if not j.future.done():
                j.future.set_result(results[i : i + len(j.texts)])
            i += len(j.texts)

    def _translate(self, texts: list[str], beam: int, nbest: int, alpha: float) -> list[list[dict]]:
        from ..decode.translate import DecodeConfig, Translator

        cfg = DecodeConfig(beam=beam, nbest=nbest, alpha=alpha)
        hyps = Translator(self.model, self.vocab, cfg).translate_ids(self.vocab.encode_batch([t.strip() for t in texts]))
        return [[{"translation": self.vocab.decode(h.tokens), "score": round(h.score, 4), "tokens": h.tokens} for h in hs]
                for hs in hyps]

    async def translate(self, req: TranslateRequest) -> dict[str, Any]:
        texts = req.items()
        self._check(texts, req.beam_size)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        await self.queue.put(_Job(texts, (req.beam_size, req.nbest, req.alpha), fut))
        results = await fut
        out = []
        for text, hyps in zip(texts, results):
            item: dict[str, Any] = {"source": text, "translation": hyps[0]["translation"]}
            if req.nbest > 1:
                item["nbest"] = [{"translation": h["translation"], "score": h["score"]} for h in hyps]
            if req.return_attention:
                item["attention"] = await asyncio.to_thread(self._attention, text, hyps[0]["tokens"])
            out.append(item)
        return {"translations": out, "milliseconds": round(1000 * (time.perf_counter() - t0), 1)}

    def _attention(self, text: str, tokens: list[int]) -> dict[str, Any]:
        from ..viz import attention_maps

        m = attention_maps(self.model, self.vocab, text, tgt_tokens=tokens)
        rnd = lambda ws: [w.mul(1000).round().div(1000).tolist() for w in ws]  # noqa: E731 - (layers, heads, q, k)
        return {"src_tokens": m["src"], "tgt_tokens": m["tgt"], "encoder": rnd(m["encoder"]),
                "decoder": rnd(m["decoder"]), "cross": rnd(m["cross"])}

    def _check(self, texts: list[str], beam: int) -> None:
        lim = self.limits
        if self.arch != "encoder-decoder":
            raise HTTPException(400, f"this model is a {self.arch} model: use /generate")
        if not texts:
            raise HTTPException(422, "no text to translate")
        if len(texts) > lim.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {lim.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > lim.max_chars:
                raise HTTPException(413, f"text {i} has {len(t)} characters; the limit is {lim.max_chars}")
        if beam > lim.max_beam:
            raise HTTPException(422, f"beam_size {beam} exceeds the server's limit of {lim.max_beam}")

    async def generate(self, req: GenerateRequest) -> dict[str, Any]:
        from ..decode.sampling import SampleConfig, generate_text

        if self.arch != "decoder-only":
            raise HTTPException(400, f"this model is a {self.arch} model: use /translate")
        if len(req.prompt) > self.limits.max_chars:
            raise HTTPException(413, f"the prompt has {len(req.prompt)} characters; the limit is {self.limits.max_chars}")
        if req.max_new_tokens > self.limits.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {req.max_new_tokens} exceeds the limit of {self.limits.max_new_tokens}")
        cfg = SampleConfig(req.max_new_tokens, req.temperature, req.top_k, req.top_p, req.seed)
        async with self.lock:
            text = await asyncio.to_thread(generate_text, self.model, self.vocab, req.prompt, cfg)
        return {"prompt": req.prompt, "text": text}

    def info(self) -> dict[str, Any]:
        return {"model": str(self.model_dir), "arch": self.arch, "config": self.config["model"],
                "vocab": self.config.get("vocab"), "vocab_size": len(self.vocab), "parameters": self.n_params,
                "step": self.config.get("step"), "limits": self.limits.__dict__}


def create_app(model_dir: str | Path, limits: Limits | None = None, threads: int = 0) -> FastAPI:
    service = Service(model_dir, limits, threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        service.worker = asyncio.create_task(service.run())
        yield
        service.worker.cancel()

    app = FastAPI(title="aiayn", description="Translate (and generate) with an aiayn model.", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post("/translate")
    async def translate(req: TranslateRequest) -> dict[str, Any]:
        return await service.translate(req)

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        return await service.generate(req)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, threads: int = 0, limits: Limits | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(model_dir, limits, threads), host=host, port=port, log_level="info")
