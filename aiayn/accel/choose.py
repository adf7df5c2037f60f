"""Which CPU fast paths pay off on *this* machine, decided by measuring them once.

The project's machines are not one CPU: on an AMD Zen 4, oneDNN's float32 GEMM is 2–2.5× MKL's; on an
Intel Xeon with AMX, MKL's float32 is twice Zen 4's and the difference may vanish or reverse. A constant
measured on one of them is wrong on the other, so each fast path is timed against the plain PyTorch call
it replaces, on a shape typical of the work (a few milliseconds in all), and used only where it is at
least ``MARGIN`` faster. The answers are cached per CPU model, ISA features, PyTorch version, thread
count and :data:`VERSION` of this measurement in ``~/.cache/aiayn/accel.json`` (``AIAYN_CACHE_DIR`` moves
it), so each machine measures once, and again when the measurement changes.

A measurement must meet the shapes as the real work meets them. Decoding changes shape almost every step
(sentences finish, the next batch has other source lengths), and bf16 products go through oneDNN, which
pays a set-up the first time it meets a shape: timed on one repeated shape, equation (1) looked 1.3–1.9×
faster than SDPA for bf16 decoding on a Zen 4, while end to end it was ≈ 15 % slower. So the decoding
choice is timed over :func:`decoding_walk`, a batch's walk through shapes this process has not met.

A measurement needs the machine to itself: if other work (other processes, or a hypervisor's other
guests: "steal" time) took more than :data:`BUSY_SHARE` of the CPU while it ran, its answers are used by
this process but marked in the cache, and the next process measures again — until a quiet measurement
replaces them, or :data:`BUSY_TRIES` busy ones in a row have been made (then the last is kept).
``aiayn accel`` shows what this machine chose, with the times behind each choice; ``aiayn accel
--measure`` measures again now.

``AIAYN_ACCEL=off`` turns every fast path off; ``AIAYN_ACCEL=on`` turns on every one that is available
(no measuring): for comparisons and tests.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

MARGIN = 1.05  # a fast path must be at least 5 % faster to be used
# Of measure(): part of the cache key, so a machine measures again when the measurement changes — or when
# its answers are known to be stale: v4 (2026-12-07) because v3 entries on the project's AMD EPYC kept
# equation (1) off for beam groups, which four fresh measurements there contradict (1.3–1.9× faster) and
# which end to end made beam 4 float32 3–7 % faster.
VERSION = 4
BUSY_SHARE = 0.2  # other work took more than this share of the CPU while measuring: measure again next time
BUSY_TRIES = 3  # ... unless that many measurements in a row were busy (the last of them is kept)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choices:
    """The fast paths to use on this machine (all CPU-only)."""

    onednn_linear_training: bool = False  # float32 projections through oneDNN instead of MKL: forward + backward
    onednn_linear_decoding: bool = False  # the same, forward only, from prepacked weights
    fast_dropout: bool = False  # dropout masks from 16-bit slices of 64-bit random integers
    # Attention as equation (1)'s two products instead of PyTorch's fused SDPA, per dtype of the queries:
    explicit_training_f32: bool = False  # training (T_k ≤ 512), float32
    explicit_training_bf16: bool = False  # training under bf16 autocast
    explicit_decoding_f32: bool = False  # decoding, a few queries per sentence (beams, one step), float32
    explicit_decoding_bf16: bool = False  # the same with bf16 weights
    preallocated_cache: bool = False  # decoding caches written into a growing buffer (not measured: no copy per step)

    @classmethod
    def all(cls) -> Choices:
        from .linear import AVAILABLE

        return cls(AVAILABLE, AVAILABLE, True, True, True, True, True, True)

    def explicit_attention(self, training: bool, dtype: torch.dtype) -> bool:
        if dtype == torch.float32:
            return self.explicit_training_f32 if training else self.explicit_decoding_f32
        if dtype == torch.bfloat16:
            return self.explicit_training_bf16 if training else self.explicit_decoding_bf16
        return False

    @classmethod
    def none(cls) -> Choices:
        return cls()


def cpu_info() -> tuple[str, set[str]]:
    """This CPU's model name and ISA flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, flags


ISA_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # what decides the fast paths


def describe_cpu() -> dict:
    """The CPU a measurement ran on: model name, the ISA features of :data:`ISA_FEATURES` it has, cores."""
    name, flags = cpu_info()
    return {"cpu": name, "features": [f for f in ISA_FEATURES if f in flags], "cores": os.cpu_count()}


def cpu_key() -> str:
    """CPU model, the ISA features that matter here, PyTorch version, threads and the measurement's version."""
    name, flags = cpu_info()
    isa = "+".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    return f"{name} [{isa}] torch {torch.__version__} threads {torch.get_num_threads()} measure v{VERSION}"


def _cache_path() -> Path:
    root = os.environ.get("AIAYN_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "aiayn")
    return Path(root) / "accel.json"


def _best_times(fns: list[Callable[..., object]], repeat: int = 7, fresh: Callable[[], object] | None = None,
                ) -> list[float]:
    """Each function's best time over ``repeat`` rounds, the functions taking turns in every round (timed
    one after the other, the first would pay the process's warm-up: early in a process, MKL's float32
    training product looked slower than oneDNN's, later 20 % faster). With ``fresh``, every call (warm-up
    included) gets a new input from it, made outside the timing."""
    args = (lambda: ()) if fresh is None else (lambda: (fresh(),))
    for fn in fns:
        fn(*args())  # warm-up: kernels, allocations
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            a = args()
            t0 = time.perf_counter()
            fn(*a)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


_FRESH_SOURCE_LENGTH = itertools.count(17)  # each walk's source length: one this process has not decoded


def decoding_walk(dtype: torch.dtype, heads: int = 4, beams: int = 4, d_k: int = 64, layers: int = 6,
                  ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The encoder-decoder attention calls of one batch's beam search, as :class:`aiayn.accel.FastAttention`
    meets them: a fresh source length S, 32 sentences of which fewer stay alive as the steps go
    (32, 24, 16, 12, 8, 4, 2, 1), each sentence's ``beams`` queries as one group, one call per decoder
    layer. Returns (q (N, h, beams, d_k), k, v (N, h, S, d_k), key-padding mask (N, 1, 1, S)) per call."""
    s = next(_FRESH_SOURCE_LENGTH)
    calls = []
    for n in (32, 24, 16, 12, 8, 4, 2, 1):
        q = torch.randn(n, heads, beams, d_k, dtype=dtype)
        k, v = torch.randn(n, heads, s, d_k, dtype=dtype), torch.randn(n, heads, s, d_k, dtype=dtype)
        mask = torch.ones(n, 1, 1, s, dtype=torch.bool)
        mask[n // 2 :, ..., s - s // 4 :] = False  # half the sentences are shorter: padding
        calls += [(q, k, v, mask)] * layers
    return calls


_FRESH_ROWS = itertools.count()  # the decoding product's row counts: 96 … 159, each new to the process for 64 calls


def measure(seconds: dict[str, list[float]] | None = None) -> Choices:
    """Time each fast path against what it replaces, on this machine (≈ 1 s). ``seconds``, if given, receives
    each path's best time and the plain call's, as ``{path: [fast, plain]}``."""
    from .dropout import dropout as fast_dropout
    from .linear import AVAILABLE, inference_linear, linear

    times = {} if seconds is None else seconds

    def chosen(name: str, t_fast: float, t_plain: float) -> bool:
        times[name] = [t_fast, t_plain]
        return t_plain > MARGIN * t_fast

    def faster(name: str, fast: Callable[[], object], plain: Callable[[], object], repeat: int = 7) -> bool:
        return chosen(name, *_best_times([fast, plain], repeat))

    torch.manual_seed(0)
    with torch.enable_grad():  # a training step's FFN-sized product, forward and backward
        x, w = torch.randn(2048, 256, requires_grad=True), torch.randn(1024, 256, requires_grad=True)
        onednn_training = AVAILABLE and faster("onednn_linear_training", lambda: linear(x, w).sum().backward(),
                                               lambda: F.linear(x, w).sum().backward(), 5)
    with torch.no_grad():  # a decoding step's output projection, from the prepacked weight, at row counts not met before
        w = torch.randn(8000, 256)
        onednn_decoding = False
        if AVAILABLE:  # (the warm-up call of _best_times packs the weight, as a model's first step does)
            t_fast, t_plain = _best_times([lambda x: inference_linear(x, w), lambda x: F.linear(x, w)], 7,
                                          fresh=lambda: torch.randn(96 + next(_FRESH_ROWS) % 64, 256))
            onednn_decoding = chosen("onednn_linear_decoding", t_fast, t_plain)
        h = torch.randn(2500, 256)
        drop = faster("fast_dropout", lambda: fast_dropout(h, 0.1, True), lambda: F.dropout(h, 0.1, True))
    decoding, training = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        suffix = "f32" if dtype == torch.float32 else "bf16"
        with torch.no_grad():  # each timed call a batch's walk through shapes not met before (see the top)
            t_explicit, t_sdpa = _best_times([_over_walk(_explicit), _over_walk(_sdpa)], 5,
                                             fresh=lambda: decoding_walk(dtype))
            decoding[dtype] = chosen(f"explicit_decoding_{suffix}", t_explicit, t_sdpa)
        with torch.enable_grad():  # forward and backward over sentence-length sequences (the caller may be under no_grad)
            q, k, v = (torch.randn(32, 4, 30, 64, dtype=dtype, requires_grad=True) for _ in range(3))
            training[dtype] = faster(f"explicit_training_{suffix}",
                                     lambda: ((q @ k.transpose(-2, -1) / 8.0).softmax(-1) @ v).sum().backward(),
                                     lambda: F.scaled_dot_product_attention(q, k, v).sum().backward(), 5)
    return Choices(onednn_linear_training=bool(onednn_training), onednn_linear_decoding=bool(onednn_decoding),
                   fast_dropout=bool(drop),
                   explicit_training_f32=training[torch.float32], explicit_training_bf16=training[torch.bfloat16],
                   explicit_decoding_f32=decoding[torch.float32], explicit_decoding_bf16=decoding[torch.bfloat16],
                   preallocated_cache=True)


def _explicit(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return (q @ k.transpose(-2, -1) / 8.0).masked_fill(~mask, float("-inf")).softmax(-1) @ v


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _over_walk(kernel: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> Callable[[list], None]:
    """``kernel`` called on every (q, k, v, mask) of a :func:`decoding_walk`."""

    def run(walk: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> None:
        for q, k, v, mask in walk:
            kernel(q, k, v, mask)

    return run


_MEMO: dict[tuple[str, str], Choices] = {}


def _forced() -> Choices | None:
    """The choices ``AIAYN_ACCEL`` sets (off: none, on: all available); None: measured (or cached)."""
    mode = os.environ.get("AIAYN_ACCEL", "auto").lower()
    if mode in ("0", "off", "none"):
        return Choices.none()
    if mode in ("1", "on", "all"):
        return Choices.all()
    return None


def choices() -> Choices:
    """This machine's choices: from ``AIAYN_ACCEL``, the cache, or a fresh measurement (then cached)."""
    forced = _forced()
    if forced is not None:
        return forced
    return _remembered(cpu_key(), _cache_path())


def _remembered(key: str, path: Path, again: bool = False) -> Choices:
    """The choices this process keeps for ``key`` in the cache at ``path`` (``again``: measured now)."""
    if again or (key, str(path)) not in _MEMO:
        _MEMO[key, str(path)] = _cached_or_measured(key, path, again)
    return _MEMO[key, str(path)]


_EXTRA = ("_seconds", "_busy")  # a cache entry's keys besides the choices: the times behind them, busy tries


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _valid(entry: object) -> bool:
    """An entry this version wrote: every choice, and nothing else but the extras (else measured again)."""
    return isinstance(entry, dict) and set(entry) - set(_EXTRA) == {f.name for f in fields(Choices)}


def _usable(entry: object) -> bool:
    """A valid entry whose measurement was quiet, or the last of :data:`BUSY_TRIES` busy ones."""
    return _valid(entry) and entry.get("_busy", 0) in (0, BUSY_TRIES)  # type: ignore[union-attr]


def _cached_or_measured(key: str, path: Path, again: bool = False) -> Choices:
    entry = _read_cache(path).get(key)
    if not again and _usable(entry):
        return Choices(**{f.name: entry[f.name] for f in fields(Choices)})  # type: ignore[index]
    tries = entry.get("_busy", 0) if _valid(entry) else 0  # type: ignore[union-attr]
    seconds: dict[str, list[float]] = {}
    before, t0 = _cpu_seconds(), time.perf_counter()
    found = measure(seconds)
    busy = _others_share(before, _cpu_seconds(), time.perf_counter() - t0)
    new = {**asdict(found), "_seconds": {k: [round(t, 6) for t in v] for k, v in seconds.items()}}
    if busy is not None and busy > BUSY_SHARE:
        new["_busy"] = min(tries + 1, BUSY_TRIES)
        then = (f"keeping it (the machine was busy {BUSY_TRIES} times in a row)" if new["_busy"] == BUSY_TRIES
                else "using the result in this process and measuring again in the next")
        log.warning("other work took %.0f%% of the CPU while measuring which fast paths pay off here; %s", 100 * busy, then)
    try:
        from ..atomic import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**_read_cache(path), key: new})
    except OSError:
        pass  # a read-only home: measure again next time
    return found


def _cpu_seconds() -> tuple[float, float] | None:
    """(seconds all of the machine's CPUs have been busy, time a hypervisor gave other guests included;
    seconds this process has run), from /proc/stat and :func:`os.times`; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(ticks) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    t = os.times()
    return (user + nice + system + irq + softirq + steal) / per_second, t.user + t.system


def _others_share(before: tuple[float, float] | None, after: tuple[float, float] | None, wall: float) -> float | None:
    """The share of the machine's CPU time (all cores, over ``wall`` seconds) that went to anything but this
    process between two :func:`_cpu_seconds` readings."""
    if before is None or after is None or wall < 0.25:  # (the kernel counts CPU time in ticks of ≈ 10 ms)
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (wall * (os.cpu_count() or 1))


def report(again: bool = False) -> dict:
    """This machine's choices and where they came from, as ``aiayn accel`` prints them (:func:`report_lines`):
    the cache key, the cache file, ``source`` (``environment``: ``AIAYN_ACCEL``; ``cache``; ``measured``: by
    this call), each choice, the times behind it (``{path: [fast, plain]}``, seconds, where the cache has
    them) and ``busy_tries`` (busy measurements in a row; 0: the last was quiet). ``again``: measure now,
    whatever the cache holds."""
    key, path = cpu_key(), _cache_path()
    forced = _forced()
    if forced is not None and not again:
        return {"key": key, "cache": str(path), "source": "environment", "choices": asdict(forced), "seconds": {},
                "busy_tries": 0}
    kept = not again and ((key, str(path)) in _MEMO or _usable(_read_cache(path).get(key)))
    found, source = _remembered(key, path, again), "cache" if kept else "measured"
    entry = _read_cache(path).get(key)
    entry = entry if _valid(entry) else {}
    return {"key": key, "cache": str(path), "source": source, "choices": asdict(found),
            "seconds": entry.get("_seconds", {}), "busy_tries": entry.get("_busy", 0)}


def report_lines(r: dict) -> list[str]:
    """:func:`report`'s answer as lines of text: the key, the cache, and a table of the choices."""
    source = {"environment": "set by AIAYN_ACCEL", "cache": "measured before, from the cache",
              "measured": "measured just now"}[r["source"]]
    busy = r.get("busy_tries", 0)
    lines = [f"machine: {r['key']}", f"cache: {r['cache']} ({source}"
             + (f"; the CPU was busy while measuring, {busy} time(s) in a row" if busy else "") + ")",
             f"{'fast path':<24} {'used':<5} {'fast ms':>8} {'plain ms':>9}"]
    for name, used in r["choices"].items():
        t = r["seconds"].get(name)
        times = f"{1000 * t[0]:8.2f} {1000 * t[1]:9.2f}" if t else f"{'—':>8} {'—':>9}"
        lines.append(f"{name:<24} {'yes' if used else 'no':<5} {times}")
    return lines
