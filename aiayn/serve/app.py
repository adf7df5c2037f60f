"""``aiayn serve``: a REST API and a web page over one model (FastAPI + uvicorn).

Requests that arrive within a short window are decoded together (dynamic batching): a single
worker collects them from a queue, groups those with the same search settings, runs each group as
one batch in a worker thread, and answers each request with its own results. The output of a
sentence does not depend on the batch it was decoded in, so batching changes only the speed.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator

from ..accel.choose import describe_cpu
from ..config import LANGUAGE_MODELS, TRANSLATION_MODELS, Limits
from ..decode.sampling import SampleConfig
from ..decode.translate import DecodeConfig, unusable_character
from ..model import device_of

STATIC = Path(__file__).parent / "static"


_DECODE = DecodeConfig()  # the library's defaults (the paper's search), the same as `aiayn translate`'s


class _Texts(BaseModel):
    text: str | None = Field(None, description="one text (or give `texts`)")
    texts: list[str] | None = Field(None, description="several texts")

    @model_validator(mode="after")
    def one_of(self) -> _Texts:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class TranslateRequest(_Texts):
    beam_size: int = Field(_DECODE.beam, ge=1, le=64)
    nbest: int = Field(_DECODE.nbest, ge=1, le=64)
    alpha: float = Field(_DECODE.alpha, ge=0.0, le=5.0)
    stopping: Literal["bound", "count"] = _DECODE.stopping  # when beam search stops (DecodeConfig.stopping)
    return_attention: bool = False

    @model_validator(mode="after")
    def nbest_within_beam(self) -> TranslateRequest:
        if self.nbest > self.beam_size:
            raise ValueError("nbest cannot exceed beam_size")
        return self


class ClassifyRequest(_Texts):
    """Texts for a fine-tuned classifier (``aiayn prepare --classify``, an encoder-only model)."""


_SAMPLE = SampleConfig()  # the library's defaults, the same as `aiayn generate`'s


class GenerateRequest(BaseModel):
    prompt: str = ""
    max_new_tokens: int = Field(_SAMPLE.max_new_tokens, ge=1)
    temperature: float = Field(_SAMPLE.temperature, ge=0.0, le=5.0)
    top_k: int = Field(_SAMPLE.top_k, ge=0)
    top_p: float = Field(_SAMPLE.top_p, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class RequestError(Exception):
    """A request refused before decoding, with the HTTP status that says why (413, 422, 503, 504)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _work(tokens: int, beam: int) -> int:
    """What decoding a text costs, in the unit of the server's work limits: (source tokens + 1) × beam."""
    return (tokens + 1) * beam


@dataclass
class _Job:
    """One /translate request in the queue: its encoded texts, search settings and answer."""

    ids: list[list[int]]
    key: tuple  # search settings (beam, nbest, alpha, stopping): only jobs with the same key share a batch
    future: asyncio.Future
    results: list[Any] = field(default_factory=list)
    next: int = 0  # texts before this one are taken (decoded or in the batch being decoded)
    done: int = 0  # texts answered
    cancelled: bool = False

    def work(self, i: int) -> int:
        return _work(len(self.ids[i]), self.key[0])

    def remaining_work(self) -> int:
        return sum(self.work(i) for i in range(self.next, len(self.ids)))


class Service:
    """The model, its vocabulary and the dynamic batcher.

    Isolation by design: every text is encoded and checked (characters, tokens, work, encodability) when
    its request arrives, so a bad text is refused alone (413/422) and never reaches a batch; a batch that
    fails anyway is decoded again request by request, so only the request that breaks it fails. Large
    requests are decoded in slices of at most ``max_batch_work``, and each batch serves the waiting
    requests with the least work left first, so a one-word request is not stuck behind a big one. The
    queue is bounded (503 + Retry-After beyond it), each request has a deadline (504), and attention maps
    are recorded per call (:func:`aiayn.model.recording_attention`), never by changing the shared model.
    """

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, device: str = "cpu") -> None:
        from ..accel import accelerate
        from ..model import count_parameters
        from ..train.checkpoint import load_model_dir, model_arch

        self.model_dir = Path(model_dir)
        self.model, self.vocab, self.config = load_model_dir(model_dir, device)
        self.device = device_of(self.model)
        # what aiayn.accel swapped in, once, before any request (on a GPU: nothing)
        self.accelerated: list[str] = accelerate(self.model) if self.device.type == "cpu" else []
        self.arch = model_arch(self.config)
        self.labels: list[str] = self.config.get("labels") or []
        if self.arch in TRANSLATION_MODELS:
            self.kind = "translation"
        elif self.arch in LANGUAGE_MODELS:
            self.kind = "language model"
        else:  # encoder-only: fine-tuned for classification, or only pretrained by masked tokens
            self.kind = "classifier" if self.labels else "masked language model"
        self.n_params = count_parameters(self.model)
        self.limits = limits or Limits()
        self.pending: list[_Job] = []  # jobs with texts not yet taken into a batch
        self.unanswered = 0  # requests accepted and not yet answered (waiting or being decoded)
        self.arrived = asyncio.Event()
        self.batches = 0
        self.draining = False  # set on shutdown: new requests get 503
        self.worker: asyncio.Task | None = None
        self.seconds_per_work = 1e-4  # running estimate, for Retry-After
        # Every model call runs on this one thread: calls never compete for the cores, and the memory
        # allocator keeps one arena's peak (aiayn.runtime.keep_freed_memory) instead of one per thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiayn-model")

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # --- admission ------------------------------------------------------------------------------
    def queued_work(self) -> int:
        return sum(j.remaining_work() for j in self.pending if not j.cancelled)

    def overloaded(self) -> bool:
        return self.draining or self.queued_work() >= self.limits.max_queue_work

    def _serves(self, kind: str) -> None:
        """Refuse (400) a request for an endpoint this model does not serve, naming the one it does."""
        if self.kind == kind:
            return
        endpoint = {"translation": "/translate", "language model": "/generate", "classifier": "/classify"}.get(self.kind)
        raise RequestError(400, f"this model is a {self.kind} ({self.arch}): " + (
            f"use {endpoint}" if endpoint else "aiayn serves translation models, language models and classifiers"))

    def _encode(self, texts: list[str], beam: int = 1, what: str = "translate") -> list[list[int]]:
        """Check every text of a request and encode it; the first problem refuses the request (only it)."""
        lim = self.limits
        if not texts:
            raise RequestError(422, f"no text to {what}")
        if len(texts) > lim.max_texts:
            raise RequestError(413, f"{len(texts)} texts in one request; the limit is {lim.max_texts}")
        if beam > lim.max_beam:
            raise RequestError(422, f"beam_size {beam} exceeds the server's limit of {lim.max_beam}")
        ids = []
        for i, t in enumerate(texts):
            if len(t) > lim.max_chars:
                raise RequestError(413, f"text {i} has {len(t)} characters; the limit is {lim.max_chars}")
            bad = unusable_character(t)
            if bad is not None:
                raise RequestError(422, f"text {i} contains {bad}; send valid Unicode text")
            seq = self.vocab.encode(t.strip())
            if len(seq) > lim.max_tokens:
                raise RequestError(413, f"text {i} has {len(seq)} tokens; the limit is {lim.max_tokens}")
            ids.append(seq)
        work = sum(_work(len(s), beam) for s in ids)
        if work > lim.max_request_work:
            raise RequestError(413, f"the request asks for {work:,} units of work (source tokens × beam); the limit is "
                                    f"{lim.max_request_work:,}: send fewer texts or a smaller beam")
        if self.overloaded():
            raise RequestError(503, "the server is shutting down" if self.draining else "the server is overloaded; retry later",
                               {"Retry-After": str(self.retry_after())})
        return ids

    def retry_after(self) -> int:
        return max(1, min(60, round(self.queued_work() * self.seconds_per_work)))

    # --- the batcher ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            while not any(not j.cancelled for j in self.pending):
                self.arrived.clear()
                await self.arrived.wait()
            await asyncio.sleep(self.limits.batch_wait_ms / 1000)  # let a burst of requests arrive together
            self.pending = [j for j in self.pending if not j.cancelled]
            if not self.pending:
                continue
            batch = self._take_batch()
            await self._run_batch(batch)

    def _take_batch(self) -> list[tuple[_Job, list[int]]]:
        """Slices of waiting jobs for one batch: the search settings of the job with the least work left;
        jobs with those settings, least work left first; at most ``max_batch_work`` and ``max_batch_texts``
        (at least one text)."""
        key = min(self.pending, key=_Job.remaining_work).key
        jobs = sorted((j for j in self.pending if j.key == key), key=_Job.remaining_work)
        batch: list[tuple[_Job, list[int]]] = []
        work = texts = 0
        for j in jobs:
            taken = []
            while j.next < len(j.ids) and texts < self.limits.max_batch_texts:
                w = j.work(j.next)
                if work and work + w > self.limits.max_batch_work:
                    break
                taken.append(j.next)
                j.next += 1
                work += w
                texts += 1
            if taken:
                batch.append((j, taken))
        self.pending = [j for j in self.pending if j.next < len(j.ids)]
        return batch

    async def _run_batch(self, batch: list[tuple[_Job, list[int]]]) -> None:
        if not batch:
            return
        key = batch[0][0].key
        ids = [j.ids[i] for j, idx in batch for i in idx]
        t0 = time.perf_counter()
        try:
            results = await self.call(self._translate, ids, *key)
        except Exception:  # find the request that broke the batch: decode each alone
            if len(batch) == 1:
                results = None
            else:
                for part in batch:
                    await self._run_batch([part])
                return
        self.batches += 1
        work = sum(_work(len(s), key[0]) for s in ids)
        self.seconds_per_work = 0.8 * self.seconds_per_work + 0.2 * (time.perf_counter() - t0) / max(work, 1)
        k = 0
        for j, idx in batch:
            if results is None:
                _answer(j, exc=RuntimeError("decoding failed for this request"))
                continue
            j.results[idx[0] : idx[-1] + 1] = results[k : k + len(idx)]
            k += len(idx)
            j.done += len(idx)
            if j.done == len(j.ids):
                _answer(j, result=j.results)

    def _translate(self, ids: list[list[int]], beam: int, nbest: int, alpha: float,
                   stopping: Literal["bound", "count"]) -> list[list[dict]]:
        from ..decode.translate import Translator

        cfg = DecodeConfig(beam=beam, nbest=nbest, alpha=alpha, stopping=stopping, max_input_tokens=self.limits.max_tokens)
        hyps = Translator(self.model, self.vocab, cfg).translate_ids(ids)
        return [[{"translation": self.vocab.decode(h.tokens), "score": round(h.score, 4), "tokens": h.tokens} for h in hs]
                for hs in hyps]

    async def translate(self, req: TranslateRequest) -> dict[str, Any]:
        self._serves("translation")
        texts = req.items()
        ids = self._encode(texts, req.beam_size)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        job = _Job(ids, (req.beam_size, req.nbest, req.alpha, req.stopping), fut, results=[None] * len(ids))
        self.pending.append(job)
        self.arrived.set()
        self.unanswered += 1
        try:
            results = await asyncio.wait_for(asyncio.shield(fut), self.limits.timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True
            raise RequestError(504,
                               f"not answered within {self.limits.timeout_s:g} s (the server is busy); retry later") from None
        except asyncio.CancelledError:  # the client went away: don't decode the rest for nobody
            job.cancelled = True
            raise
        finally:
            self.unanswered -= 1
        out = []
        for text, hyps in zip(texts, results):
            item: dict[str, Any] = {"source": text, "translation": hyps[0]["translation"]}
            if req.nbest > 1:
                item["nbest"] = [{"translation": h["translation"], "score": h["score"]} for h in hyps]
            if req.return_attention:
                item["attention"] = await self.call(self._attention, text, hyps[0]["tokens"])
            out.append(item)
        return {"translations": out, "milliseconds": round(1000 * (time.perf_counter() - t0), 1)}

    def _attention(self, text: str, tokens: list[int]) -> dict[str, Any]:
        from ..viz import attention_maps

        m = attention_maps(self.model, self.vocab, text, tgt_tokens=tokens)
        rnd = lambda ws: [w.mul(1000).round().div(1000).tolist() for w in ws]  # noqa: E731 - (layers, heads, q, k)
        return {"src_tokens": m["src"], "tgt_tokens": m["tgt"], "encoder": rnd(m["encoder"]),
                "decoder": rnd(m["decoder"]), "cross": rnd(m["cross"])}

    async def classify(self, req: ClassifyRequest) -> dict[str, Any]:
        """Each text's label, its probability and every label's: one model call per request, on the model thread,
        after every text of the request has been checked (a bad text refuses its own request only)."""
        from ..evaluate import class_probabilities

        self._serves("classifier")
        ids = self._encode(req.items(), what="classify")
        t0 = time.perf_counter()
        probs = await self.call(class_probabilities, self.model, ids)
        best = probs.argmax(-1).tolist()
        out = [{"label": self.labels[c], "probability": round(row[c], 6),
                "probabilities": {label: round(p, 6) for label, p in zip(self.labels, row)}}
               for c, row in zip(best, probs.tolist())]
        return {"results": out, "milliseconds": round(1000 * (time.perf_counter() - t0), 1)}

    async def generate(self, req: GenerateRequest) -> dict[str, Any]:
        from ..decode.sampling import generate_text

        self._serves("language model")
        if len(req.prompt) > self.limits.max_chars:
            raise RequestError(413, f"the prompt has {len(req.prompt)} characters; the limit is {self.limits.max_chars}")
        if any("\ud800" <= c <= "\udfff" for c in req.prompt):
            raise RequestError(422, "the prompt contains an unpaired surrogate; send valid Unicode text")
        if req.max_new_tokens > self.limits.max_new_tokens:
            raise RequestError(422, f"max_new_tokens {req.max_new_tokens} exceeds the limit of {self.limits.max_new_tokens}")
        if self.draining:
            raise RequestError(503, "the server is shutting down", {"Retry-After": "5"})
        cfg = SampleConfig(req.max_new_tokens, req.temperature, req.top_k, req.top_p, req.seed)
        text = await self.call(generate_text, self.model, self.vocab, req.prompt, cfg)  # one model call at a time
        return {"prompt": req.prompt, "text": text}

    def info(self) -> dict[str, Any]:
        return {"model": str(self.model_dir), "arch": self.arch, "kind": self.kind,
                **({"labels": self.labels} if self.labels else {}), "config": self.config["model"],
                "vocab": self.config.get("vocab"), "vocab_size": len(self.vocab), "parameters": self.n_params,
                "step": self.config.get("step"), "limits": self.limits.__dict__, "device": str(self.device),
                **({"cpu": describe_cpu(), "accelerated": self.accelerated} if self.device.type == "cpu" else {})}


def _answer(job: _Job, result: Any = None, exc: BaseException | None = None) -> None:
    if job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
    job.next = len(job.ids)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 as soon as that is known (from
    Content-Length, or while a chunked body streams in), before it is buffered whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _too_large(send, self.max_bytes)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any, max_bytes: int) -> None:
    body = json.dumps({"detail": f"request body over {max_bytes:,} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(model_dir: str | Path, limits: Limits | None = None, device: str = "cpu") -> FastAPI:
    service = Service(model_dir, limits, device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker = asyncio.create_task(service.run())
        yield
        # uvicorn has stopped accepting connections and let in-flight requests finish (SIGTERM, Ctrl-C).
        service.draining = True
        service.worker.cancel()
        service.executor.shutdown(wait=False)

    app = FastAPI(title="aiayn", description="Translate (and generate) with an aiayn model.", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail}, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # one request's failure, never the server's
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Alive; with the queue's state (texts and work waiting, batches run)."""
        live = [j for j in service.pending if not j.cancelled]
        return {"status": "ok", "unanswered_requests": service.unanswered, "queued_requests": len(live),
                "queued_texts": sum(len(j.ids) - j.next for j in live),
                "queued_work": service.queued_work(), "max_queue_work": service.limits.max_queue_work,
                "batches": service.batches, "draining": service.draining}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when a new request would be accepted now; 503 while overloaded or shutting down."""
        ok = not service.overloaded()
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "queued_work": service.queued_work()},
                            headers=None if ok else {"Retry-After": str(service.retry_after())})

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post("/translate")
    async def translate(req: TranslateRequest) -> dict[str, Any]:
        return await service.translate(req)

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        return await service.generate(req)

    @app.post("/classify")
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        return await service.classify(req)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, threads: int = 0, limits: Limits | None = None,
          device: str = "cpu") -> None:
    import uvicorn

    from ..runtime import configure_process

    configure_process(threads)
    # On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets in-flight requests finish (up to
    # timeout_graceful_shutdown seconds), then runs the app's shutdown.
    uvicorn.run(create_app(model_dir, limits, device), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=(limits or Limits()).timeout_s)
