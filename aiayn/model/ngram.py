"""The count-based language model the neural ones replaced: an n-gram model with interpolated
Kneser-Ney smoothing (Kneser & Ney 1995; Chen & Goodman 1998, §3.5).

It "trains" by counting the n-grams of a token stream, and predicts the next token from the last
n − 1 with a recursion over context lengths, shortest first::

    P_0(w)        = 1 / V                                   (uniform over the vocabulary)
    P_k(w | h)    = max(c_k(h w) − D_k, 0) / T_k(h)  +  D_k · N_k(h) / T_k(h) · P_{k−1}(w | h')

where h is the last k − 1 tokens and h' the last k − 2, and

* c_k is the raw count of the n-gram ``h w`` at the highest order (k = n) and, at lower orders, its
  *continuation count*: the number of distinct tokens seen before it (KN's idea: a word's unigram
  probability should say in how many contexts it appears, not how often — "Francisco" is frequent
  but follows only "San");
* T_k(h) = Σ_w c_k(h w) and N_k(h) = |{w : c_k(h w) > 0}|, so that the probabilities of every
  context sum to one (tested for seen and unseen contexts);
* D_k ∈ [0, 1) is the discount of order k, by default estimated from the counts-of-counts as
  n₁ / (n₁ + 2 n₂) (Ney et al. 1994);
* a context never seen at order k (T_k(h) = 0) falls back entirely to P_{k−1}.

As an ``nn.Module`` it has the interface of :class:`~aiayn.model.lm.LanguageModel`: tokens (B, T) →
next-token log-probabilities (B, T, V) (log-probabilities are logits whose log-sum-exp is 0), and
``start``/``step`` for sampling, so the evaluation and the sampler of the Transformer LM use it as is.
The counts are buffers of the module: a model directory holds them in ``model.safetensors``.

Storage: the m-grams seen (m = 1 … n) form a trie. Each m-gram has an id; ``keys[m]`` (sorted) holds
``id(prefix) · V + last token`` for every m-gram, so the children of a context are one contiguous
range, found by binary search (the unigram's prefix is the empty context, id 0).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .window import WindowState, window_step


class NGramLM(nn.Module):
    """Interpolated Kneser-Ney n-gram language model of order ``cfg.order``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n, self.V = cfg.order, cfg.vocab_size
        for m in range(1, self.n + 1):
            self.register_buffer(f"keys{m}", torch.zeros(0, dtype=torch.long))  # sorted: id(prefix)·V + token
            self.register_buffer(f"counts{m}", torch.zeros(0, dtype=torch.long))  # c_m of each m-gram (see above)
            if m < self.n:  # T_{m+1} and N_{m+1} of each m-gram as a context
                self.register_buffer(f"totals{m}", torch.zeros(0, dtype=torch.long))
                self.register_buffer(f"types{m}", torch.zeros(0, dtype=torch.long))
        self.register_buffer("discounts", torch.zeros(self.n, dtype=torch.float64))  # D_1 … D_n
        self.register_buffer("root", torch.zeros(2, dtype=torch.long))  # T_1, N_1 of the empty context

    # --- counting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, tokens: np.ndarray | Tensor) -> NGramLM:
        """Count the n-grams of one token stream (every position, orders 1 … n) and set the discounts."""
        x = np.asarray(tokens, dtype=np.int64)
        if x.ndim != 1 or x.size < self.n:
            raise ValueError(f"an order-{self.n} model needs a stream of at least {self.n} tokens, got {x.size}")
        if x.min() < 0 or x.max() >= self.V:
            raise ValueError(f"token ids must be in [0, {self.V}), got {x.min()} … {x.max()}")
        ids = [np.zeros(x.size, dtype=np.int64)]  # ids[m][i]: the id of the m-gram starting at i (m = 0: the root)
        keys, raw = [None], [None]
        for m in range(1, self.n + 1):
            key = ids[m - 1][: x.size - m + 1] * self.V + x[m - 1 :]
            uniq, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
            keys.append(uniq)
            raw.append(count)
            ids.append(inverse)
        # Continuation counts: how many distinct (m+1)-grams (distinct tokens before) end with each m-gram.
        cont = [None]
        for m in range(1, self.n):
            n_next = len(keys[m + 1])
            first = np.zeros(n_next, dtype=np.int64)  # one position where each (m+1)-gram type occurs
            first[ids[m + 1]] = np.arange(ids[m + 1].size)
            suffix = ids[m][first + 1]  # the m-gram starting one later: the (m+1)-gram's last m tokens
            cont.append(np.bincount(suffix, minlength=len(keys[m])))
        counts = [None] + [cont[m] if m < self.n else raw[m] for m in range(1, self.n + 1)]
        # Per context (an (m−1)-gram, or the root): T and N of the counts its children use.
        for m in range(1, self.n + 1):
            parent = keys[m] // self.V
            n_parents = 1 if m == 1 else len(keys[m - 1])
            totals = np.bincount(parent, weights=counts[m], minlength=n_parents).astype(np.int64)
            types = np.bincount(parent, weights=counts[m] > 0, minlength=n_parents).astype(np.int64)
            if m == 1:
                self.root = torch.tensor([totals[0], types[0]])
            else:
                setattr(self, f"totals{m - 1}", torch.from_numpy(totals))
                setattr(self, f"types{m - 1}", torch.from_numpy(types))
            setattr(self, f"keys{m}", torch.from_numpy(keys[m]))
            setattr(self, f"counts{m}", torch.from_numpy(counts[m].astype(np.int64)))
        if self.cfg.discounts:
            self.discounts = torch.tensor(self.cfg.discounts, dtype=torch.float64)
        else:
            self.discounts = torch.tensor([estimate_discount(counts[m]) for m in range(1, self.n + 1)],
                                          dtype=torch.float64)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The tables' sizes depend on the corpus: take the stored shapes before copying.
        for name, buf in self._buffers.items():
            stored = state_dict.get(prefix + name)
            if stored is not None and buf is not None and stored.shape != buf.shape:
                self._buffers[name] = torch.empty_like(stored, dtype=buf.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- probabilities ----------------------------------------------------------------------------
    def _lookup(self, m: int, parent: Tensor, token: Tensor) -> Tensor:
        """Ids of the m-grams (parent context id, token), −1 where that m-gram was never seen."""
        keys = getattr(self, f"keys{m}")
        if keys.numel() == 0:
            return torch.full_like(parent, -1)
        key = parent * self.V + token
        pos = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
        return torch.where((keys[pos] == key) & (parent >= 0), pos, torch.full_like(pos, -1))

    def probs(self, contexts: Tensor) -> Tensor:
        """contexts (P, n − 1) of token ids, left-padded with −1 where shorter → P(· | context) (P, V),
        float64; every row sums to one."""
        p_rows, V, dev = contexts.size(0), self.V, contexts.device
        d = self.discounts.to(dev)
        # Order 1: the empty context's children are the unigrams.
        t1, n1 = self.root.double()
        uni = torch.zeros(V, dtype=torch.float64, device=dev)
        if t1 > 0:
            uni[self.keys1 % V] = (self.counts1.double() - d[0]).clamp(min=0) / t1
            uni += d[0] * n1 / t1 / V
        else:
            uni += 1.0 / V
        out = uni.expand(p_rows, V).clone()
        # Orders 2 … n: the context is the last k − 1 tokens, whose id is found one token at a time.
        for k in range(2, self.n + 1):
            h = contexts[:, contexts.size(1) - (k - 1) :]  # (P, k − 1)
            ctx = torch.zeros(p_rows, dtype=torch.long, device=dev)
            for j in range(k - 1):  # the id of h[:, :j+1] from that of h[:, :j] (−1: before the row, or unseen)
                ctx = self._lookup(j + 1, ctx, h[:, j].clamp(min=0))
                ctx = torch.where(h[:, j] >= 0, ctx, torch.full_like(ctx, -1))
            known = ctx >= 0
            safe = ctx.clamp(min=0)
            total = getattr(self, f"totals{k - 1}")[safe].double() * known
            seen = total > 0
            if not bool(seen.any()):
                continue
            rows = seen.nonzero().squeeze(1)
            c, t = safe[rows], total[rows]
            gamma = d[k - 1] * getattr(self, f"types{k - 1}")[c].double() / t
            out[rows] *= gamma.unsqueeze(1)
            # The children of each context: one contiguous range of keys{k}.
            keys, counts = getattr(self, f"keys{k}"), getattr(self, f"counts{k}")
            lo = torch.searchsorted(keys, c * V)
            hi = torch.searchsorted(keys, (c + 1) * V)
            sizes = hi - lo
            r = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), sizes)
            idx = torch.repeat_interleave(lo - sizes.cumsum(0) + sizes, sizes) + torch.arange(int(sizes.sum()), device=dev)
            alpha = (counts[idx].double() - d[k - 1]).clamp(min=0) / t[r]
            out.index_put_((rows[r], keys[idx] % V), alpha, accumulate=True)
        return out

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) → log P(next token | the last n − 1 tokens within the row) (B, T, V)."""
        b, t = tokens.shape
        ctx = _contexts(tokens, self.n - 1)  # (B·T, n − 1)
        out = torch.empty(b * t, self.V, dtype=torch.float32, device=tokens.device)
        chunk = max(1, (1 << 22) // self.V)
        for i in range(0, b * t, chunk):
            out[i : i + chunk] = self.probs(ctx[i : i + chunk]).log().float()
        return out.view(b, t, self.V)

    @property
    def block_size(self) -> int:
        return self.cfg.max_positions

    def start(self) -> WindowState:
        return WindowState.empty()

    def step(self, tokens: Tensor, state: WindowState) -> Tensor:
        """tokens (B, t) new tokens → log-probabilities (B, t, V) of the token after each."""
        return window_step(self, tokens, state, self.n - 1)

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{getattr(self, f'keys{m}').numel():,}" for m in range(1, self.n + 1))
        return f"order={self.n}, vocab={self.V}, n-grams per order=[{sizes}]"


def _contexts(tokens: Tensor, width: int) -> Tensor:
    """(B, T) → (B·T, width): for each position, the ``width`` tokens ending at it, −1 before the row."""
    b, t = tokens.shape
    padded = torch.cat([torch.full((b, width), -1, dtype=tokens.dtype, device=tokens.device), tokens], dim=1)
    if width == 0:
        return tokens.new_zeros(b * t, 0)
    return padded.unfold(1, width, 1)[:, 1:].reshape(b * t, width)


def estimate_discount(counts: np.ndarray) -> float:
    """Ney, Essen & Kneser (1994): D = n₁ / (n₁ + 2 n₂), from how many n-grams occur once and twice."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)
