"""Word vectors: nearest neighbours, analogies, the word2vec text format, and the standard evaluations
— Spearman correlation with human similarity judgements (WordSim-353, SimLex-999) and accuracy on
Mikolov's analogy questions ("athens greece baghdad ?" → iraq) — read from the copies that the
``gensim`` package ships in ``gensim/test/test_data`` (nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The evaluation sets gensim ships, by the name aiayn uses for them.
EVALUATION_SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt", "analogies": "questions-words.txt"}


def gensim_test_file(name: str) -> Path:
    """The path of an evaluation set inside the installed ``gensim`` package."""
    try:
        import gensim
    except ImportError:
        raise FileNotFoundError("the evaluation sets are read from the gensim package: pip install 'aiayn[lineage]'") from None
    path = Path(gensim.__file__).parent / "test" / "test_data" / EVALUATION_SETS.get(name, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this gensim installation")
    return path


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their average rank), as scipy.stats.spearmanr."""
    def ranks(x: np.ndarray) -> np.ndarray:
        r = np.empty(len(x))
        r[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
        _, tie, n = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(tie, weights=r) / n)[tie]  # equal values share their mean rank

    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


class UnknownWord(KeyError, ValueError):
    """A word the vectors do not have."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Analogy:
    correct: int
    total: int  # questions whose four words are all in the vocabulary
    skipped: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


class WordVectors:
    """Words (most frequent first) and their vectors; lookups by cosine similarity."""

    def __init__(self, words: list[str], vectors: np.ndarray, counts: np.ndarray | None = None) -> None:
        if len(words) != len(vectors):
            raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
        self.words, self.vectors, self.counts = list(words), np.asarray(vectors, dtype=np.float32), counts
        self.index = {w: i for i, w in enumerate(self.words)}
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit = self.vectors / np.maximum(norms, 1e-12)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self._id(word)]

    def _id(self, word: str) -> int:
        if word not in self.index:
            raise UnknownWord(f"{word!r} is not in the vocabulary ({len(self):,} words)")
        return self.index[word]

    def similarity(self, a: str, b: str) -> float:
        return float(self.unit[self._id(a)] @ self.unit[self._id(b)])

    def most_similar(self, positive: list[str], negative: list[str] = (), topn: int = 10,
                     restrict: int | None = None) -> list[tuple[str, float]]:
        """The words nearest (cosine) to Σ positive − Σ negative of the unit vectors, the query words
        excluded (gensim's ``most_similar``; ``king − man + woman`` is positive=[king, woman], negative=[man])."""
        ids = [self._id(w) for w in (*positive, *negative)]
        query = self.unit[[self._id(w) for w in positive]].sum(0) - (
            self.unit[[self._id(w) for w in negative]].sum(0) if negative else 0)
        query /= max(np.linalg.norm(query), 1e-12)
        unit = self.unit[:restrict] if restrict else self.unit
        sims = unit @ query
        sims[[i for i in ids if i < len(sims)]] = -np.inf
        best = np.argsort(-sims)[:topn]
        return [(self.words[i], float(sims[i])) for i in best]

    # --- the word2vec text format -----------------------------------------------------------------
    def save_word2vec_format(self, path: str | Path) -> None:
        """First line "<words> <dim>", then one "word v1 … vd" line per word (gensim, the C tool, fastText)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{len(self)} {self.vectors.shape[1]}\n")
            for w, v in zip(self.words, self.vectors):
                f.write(w + " " + " ".join(f"{x:.6g}" for x in v) + "\n")

    @classmethod
    def load_word2vec_format(cls, path: str | Path) -> WordVectors:
        with open(path, encoding="utf-8") as f:
            header = f.readline().split()
            if len(header) != 2 or not all(h.isdigit() for h in header):
                raise ValueError(f"{path}:1: not a word2vec text file (expected '<words> <dimension>')")
            n, d = map(int, header)
            words, rows = [], np.empty((n, d), dtype=np.float32)
            for i, line in enumerate(f):
                parts = line.rstrip("\n").split(" ")
                if i >= n or len(parts) != d + 1:
                    raise ValueError(f"{path}:{i + 2}: expected a word and {d} numbers")
                words.append(parts[0])
                rows[i] = np.array(parts[1:], dtype=np.float32)
        if len(words) != n:
            raise ValueError(f"{path}: the header promises {n} words, the file has {len(words)}")
        return cls(words, rows)

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate_pairs(self, path: str | Path) -> dict[str, float]:
        """Spearman correlation between cosine similarity and the human scores of a word-pair file
        (``word1<TAB>word2<TAB>score``, '#' comments; pairs with an unknown word are left out and counted)."""
        gold, ours, skipped = [], [], 0
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            a, b, score = line.split("\t")[:3]
            a, b = a.lower(), b.lower()
            if a in self and b in self:
                gold.append(float(score))
                ours.append(self.similarity(a, b))
            else:
                skipped += 1
        return {"spearman": spearman(np.array(gold), np.array(ours)) if len(gold) > 2 else float("nan"),
                "pairs": len(gold), "skipped": skipped}

    def evaluate_analogies(self, path: str | Path, restrict: int = 300_000) -> Analogy:
        """3CosAdd accuracy on "a b c d" questions (d = b − a + c, the three excluded) whose four words are
        among the ``restrict`` most frequent; ': section' lines are headers (gensim's rule)."""
        vocab = set(self.words[:restrict])
        questions, skipped = [], 0
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith(":"):
                continue
            q = line.lower().split()
            if all(w in vocab for w in q):
                questions.append([self.index[w] for w in q])
            else:
                skipped += 1
        if not questions:
            return Analogy(0, 0, skipped)
        q = np.array(questions)
        unit = self.unit[:restrict]
        correct = 0
        for i in range(0, len(q), 512):
            a, b, c, d = q[i : i + 512].T
            query = unit[b] - unit[a] + unit[c]
            query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
            sims = query @ unit.T  # (questions, words)
            rows = np.arange(len(a))
            sims[rows, a] = sims[rows, b] = sims[rows, c] = -np.inf
            correct += int((sims.argmax(1) == d).sum())
        return Analogy(correct, len(q), skipped)

    def evaluate(self) -> dict[str, float]:
        """WordSim-353 and SimLex-999 Spearman, analogy accuracy, from the sets gensim ships."""
        ws = self.evaluate_pairs(gensim_test_file("wordsim353"))
        sl = self.evaluate_pairs(gensim_test_file("simlex999"))
        an = self.evaluate_analogies(gensim_test_file("analogies"))
        return {"wordsim353": round(ws["spearman"], 4), "wordsim353_pairs": ws["pairs"],
                "simlex999": round(sl["spearman"], 4), "simlex999_pairs": sl["pairs"],
                "analogy_accuracy": round(an.accuracy, 4), "analogy_questions": an.total}
