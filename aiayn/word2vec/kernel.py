"""word2vec's updates one prediction at a time, compiled with Numba: the loop of the original C tool
(``word2vec.c``, Mikolov 2013) and of gensim's Cython, written in Python.

For each prediction — an input vector v (one word's, or the mean of a context's for CBOW) and its targets,
the true word then ``negative`` noise words — and for each target t in turn::

    f = v · u_t                       # the score
    g = lr · (label − σ(f))           # label 1 for the true word, 0 for noise
    e += g · u_t                      # the step for the input side, gathered over the targets
    u_t += g · v                      # the output vector, updated at once

then e is added to the input vector (CBOW: to every context word's, whole, as the C tool does). A noise
word that is the true word is skipped. Each update sees the vectors the previous one left, which is
what the batched PyTorch path of :mod:`aiayn.word2vec` approximates (and damps where it cannot);
tests/test_word2vec.py holds the two equal where they coincide (one prediction whose targets differ).

The functions release the GIL (``nogil``): :func:`~aiayn.word2vec.train_word2vec` runs ``workers``
threads over their shares of the chunks, updating the shared vectors without locks, as gensim's
workers do. Numba is optional (``pip install aiayn[lineage]``): without it ``engine: auto`` takes the
PyTorch path. The first use on a machine compiles for a few seconds; the result is cached on disk.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # the PyTorch path serves
    numba = None


def available() -> bool:
    """Whether Numba is installed (the compiled engine can run)."""
    return numba is not None


def _predict(w_in: np.ndarray, w_out: np.ndarray, v: np.ndarray, targets: np.ndarray, lr: float,
             e: np.ndarray) -> float:
    """One prediction: updates the targets' output vectors in place, leaves the input step in ``e``; its loss
    (−log σ(f) for the true word, −log σ(−f) for each noise word)."""
    d = v.shape[0]
    e[:] = 0.0
    loss = 0.0
    for j in range(targets.shape[0]):
        t = targets[j]
        if j > 0 and t == targets[0]:
            continue  # a noise word that is the true word
        f = np.float32(0.0)  # float32 sums and steps, as the vectors (and the C tool's) are
        for c in range(d):
            f += v[c] * w_out[t, c]
        s = min(max(float(f), -30.0), 30.0)
        x = math.exp(-s)
        # −log σ(f) = log(1 + e^−f); −log σ(−f) = f + log(1 + e^−f)
        loss += math.log1p(x) + (s if j > 0 else 0.0)
        g = np.float32(lr * ((1.0 if j == 0 else 0.0) - 1.0 / (1.0 + x)))
        for c in range(d):
            e[c] += g * w_out[t, c]
            w_out[t, c] += g * v[c]
    return loss


def skipgram_chunk(w_in: np.ndarray, w_out: np.ndarray, inputs: np.ndarray, targets: np.ndarray, lr: float) -> float:
    """Skip-gram predictions in order: ``inputs`` (P,) the word whose input vector predicts, ``targets``
    (P, 1 + k) the context word then the noise words. Returns the summed loss."""
    d = w_in.shape[1]
    e = np.empty(d, dtype=w_in.dtype)
    v = np.empty(d, dtype=w_in.dtype)
    loss = 0.0
    for p in range(inputs.shape[0]):
        w = inputs[p]
        v[:] = w_in[w]
        loss += _predict(w_in, w_out, v, targets[p], lr, e)
        for c in range(d):
            w_in[w, c] += e[c]
    return loss


def cbow_chunk(w_in: np.ndarray, w_out: np.ndarray, context: np.ndarray, offsets: np.ndarray, targets: np.ndarray,
               lr: float) -> float:
    """CBOW predictions in order: prediction p's context words are ``context[offsets[p]:offsets[p + 1]]``
    (v is the mean of their input vectors), ``targets`` (P, 1 + k) the middle word then the noise words.
    Every context word takes the whole input step. Returns the summed loss."""
    d = w_in.shape[1]
    e = np.empty(d, dtype=w_in.dtype)
    v = np.empty(d, dtype=w_in.dtype)
    loss = 0.0
    for p in range(targets.shape[0]):
        a, b = offsets[p], offsets[p + 1]
        v[:] = 0.0
        for i in range(a, b):
            for c in range(d):
                v[c] += w_in[context[i], c]
        inv = 1.0 / (b - a)
        for c in range(d):
            v[c] *= inv
        loss += _predict(w_in, w_out, v, targets[p], lr, e)
        for i in range(a, b):
            for c in range(d):
                w_in[context[i], c] += e[c]
    return loss


if numba is not None:
    _jit = numba.njit(nogil=True, fastmath=True, cache=True)
    _predict = _jit(_predict)
    skipgram_chunk = _jit(skipgram_chunk)
    cbow_chunk = _jit(cbow_chunk)
