"""Greedy and beam search (§6.1): exactness on a tiny vocabulary, batch invariance, ordering."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from aiayn.config import BOS_ID, EOS_ID, preset
from aiayn.data.batching import source_tensor
from aiayn.decode.search import beam_search, greedy_search, length_penalty, max_lengths
from aiayn.decode.translate import DecodeConfig, InputTooLong, Translator
from aiayn.model import Transformer


def random_model(vocab=64, seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(preset("tiny", vocab_size=vocab, dropout=0.0, **kw)).eval().double()


def sources(n=6, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def _logp(model, src, seq):
    """log P(seq | src) by teacher forcing."""
    s = source_tensor([src])
    tgt_in = torch.tensor([[BOS_ID] + seq[:-1]])
    logp = model(s, tgt_in).float().log_softmax(-1)[0]
    return sum(logp[i, t].item() for i, t in enumerate(seq))


def test_beam_search_is_exact_when_the_beam_holds_everything():
    # V = 4 specials + 2 words; max length 3: every hypothesis fits in a beam of 16.
    model = random_model(vocab=6, seed=3)
    src = [4, 5, 4]
    limit = torch.tensor([3])
    best = beam_search(model, source_tensor([src]), limit, beam=16, alpha=0.6, nbest=3)[0]
    candidates = []
    for n in range(0, 3):
        for words in itertools.product([4, 5, 1], repeat=n):  # 1 = <unk> is a real token too
            seq = list(words) + [EOS_ID]
            candidates.append((_logp(model, src, seq) / length_penalty(len(seq), 0.6), list(words)))
    for words in itertools.product([4, 5, 1], repeat=3):  # out of length: end without </s>
        candidates.append((_logp(model, src, list(words)) / length_penalty(3, 0.6), list(words)))
    candidates.sort(key=lambda c: -c[0])
    assert [h.tokens for h in best] == [c[1] for c in candidates[:3]]
    for h, c in zip(best, candidates):
        assert h.score == pytest.approx(c[0], abs=1e-4)


def fairseq_rule(model, src, limit, k, alpha):
    """Beam search with fairseq's stopping rule, one sentence, written plainly: at each step the 2k best
    continuations of the k beams; a </s> among the k best of them is a finished hypothesis, the k best others
    are the next beams; stop once k hypotheses have finished or at the length limit (the beams end there)."""
    beams, done = [([], 0.0)], []
    for t in range(limit):
        cands = []
        for toks, logp in beams:
            lp = model(source_tensor([src]), torch.tensor([[BOS_ID] + toks]))[0, -1].log_softmax(-1)
            lp[0] = lp[2] = float("-inf")  # <pad>, <s>
            cands += [(logp + lp[v].item(), toks, v) for v in range(lp.numel())]
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, toks, v) in enumerate(cands[: 2 * k]):
            if v == EOS_ID:
                if rank < k:
                    done.append((score / length_penalty(t + 1, alpha), toks))
            elif len(beams) < k:
                beams.append((toks + [v], score))
        if t + 1 >= limit:
            done += [(score / length_penalty(t + 1, alpha), toks) for toks, score in beams]
        if len(done) >= k or t + 1 >= limit:
            return sorted(done, key=lambda d: -d[0]), t + 1


class CountSteps:
    """A model that counts its decoding steps."""

    def __init__(self, model):
        self.model, self.steps = model, 0

    def start(self, src, beams=1):
        return self.model.start(src, beams=beams)

    def step(self, tokens, state):
        self.steps += 1
        return self.model.step(tokens, state)


def test_beam_search_that_stops_after_k_ended_is_fairseqs_rule():
    """stopping="count" (fairseq, HF early_stopping=True, CTranslate2) = the rule written out, per sentence,
    in a batch; "bound" never stops earlier than it needs to: its best is at least as good."""
    model = random_model(vocab=10, seed=11)
    srcs, k = sources(6, vocab=10, seed=4), 3
    limits = torch.tensor([16, 17, 15, 18, 16, 17])
    got = beam_search(model, source_tensor(srcs), limits, beam=k, alpha=0.6, nbest=2, stopping="count")
    exact = beam_search(model, source_tensor(srcs), limits, beam=k, alpha=0.6, nbest=2)
    for src, limit, hyps, best in zip(srcs, limits.tolist(), got, exact):
        want, steps = fairseq_rule(model, src, limit, k, 0.6)
        alone = CountSteps(model)
        assert beam_search(alone, source_tensor([src]), torch.tensor([limit]), beam=k, alpha=0.6, nbest=2,
                           stopping="count")[0][0].tokens == hyps[0].tokens
        assert alone.steps == steps  # it stopped where the rule stops
        assert [h.tokens for h in hyps] == [w[1] for w in want[:2]]
        assert [h.score for h in hyps] == pytest.approx([w[0] for w in want[:2]], abs=1e-6)
        assert best[0].score >= hyps[0].score - 1e-9
    assert len({len(h[0].tokens) for h in got}) > 1  # sentences of several lengths, ended at different steps
    with pytest.raises(ValueError, match="stopping"):
        beam_search(model, source_tensor(srcs), limits, beam=k, stopping="never")


@pytest.mark.parametrize("beam", [1, 4])
def test_output_does_not_depend_on_the_batch(beam):
    model = random_model()
    srcs = sources(8)
    cfg = DecodeConfig(beam=beam, max_len_b=10)
    tr = Translator(model, None, cfg)
    together = tr.translate_ids(srcs)
    alone = [tr.translate_ids([s])[0] for s in srcs]
    in_pairs = [h for i in range(0, 8, 2) for h in tr.translate_ids(srcs[i : i + 2])]
    for a, b, c in zip(together, alone, in_pairs):
        assert a[0].tokens == b[0].tokens == c[0].tokens
        assert a[0].score == pytest.approx(b[0].score, abs=1e-6)


def test_greedy_follows_the_argmax_of_a_full_forward():
    model = random_model(seed=5)
    src = source_tensor(sources(1, seed=7))
    hyp = greedy_search(model, src, torch.tensor([6]))[0]
    seq = hyp.tokens + ([EOS_ID] if len(hyp.tokens) < 6 else [])
    logits = model(src, torch.tensor([[BOS_ID] + seq[:-1]]))[0]
    logits[:, 0] = logits[:, 2] = float("-inf")  # <pad> and <s> are never produced
    assert logits.argmax(-1).tolist() == seq


def test_max_length_is_source_plus_50():
    src = source_tensor([[5, 6, 7], [5]])
    assert max_lengths(src).tolist() == [53, 51]


def test_nbest_is_sorted_and_bounded():
    model = random_model()
    hyps = beam_search(model, source_tensor(sources(2)), torch.tensor([8, 8]), beam=4, nbest=3)
    for hs in hyps:
        assert len(hs) == 3 and [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
    with pytest.raises(ValueError):
        beam_search(model, source_tensor(sources(1)), torch.tensor([8]), beam=2, nbest=3)


def test_translator_keeps_order_empty_lines_and_rejects_long_inputs():
    model = random_model()
    tr = Translator(model, None, DecodeConfig(beam=2, max_len_b=5, max_input_tokens=20, max_tokens=16))
    srcs = sources(5)
    srcs.insert(2, [])
    out = tr.translate_ids(srcs)
    assert out[2][0].tokens == []
    assert [o[0].tokens for o in out[:2]] == [tr.translate_ids([s])[0][0].tokens for s in srcs[:2]]
    with pytest.raises(InputTooLong, match="input 1 has 21 tokens"):
        tr.translate_ids([[5] * 21])


def test_beam_search_fast_path_equals_reference_path():
    """SDPA + caches (the fast path) and equation (1) written out give the same beams, token for token."""
    from aiayn.model import set_attention_impl

    model = random_model(seed=5).float()
    srcs = sources(8, seed=7)
    cfg = DecodeConfig(beam=4, max_len_b=10, nbest=2)
    fast = Translator(model, None, cfg).translate_ids(srcs)
    set_attention_impl(model, "reference")
    ref = Translator(model, None, cfg).translate_ids(srcs)
    set_attention_impl(model, "sdpa")
    assert [[h.tokens for h in x] for x in fast] == [[h.tokens for h in x] for x in ref]


def test_int8_linear_is_a_quantized_linear():
    from aiayn.accel.quantize import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin.weight, lin.bias, rows=(slice(0, 32), slice(32, None)))
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        ref = lin(x)
        for rows in (slice(None), slice(0, 32), slice(32, None)):
            got = q(x, rows)
            assert got.shape == ref[..., rows].shape
            err = (got - ref[..., rows]).abs().max() / ref.abs().max()
            assert err < 0.03, err


@pytest.mark.parametrize("compute_type", ["float32", "bfloat16", "int8"])
def test_every_compute_type_keeps_the_output_bias(compute_type):
    """An output bias (imported Marian models) is part of the logits in every decoding copy."""
    from aiayn.accel import for_inference

    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=40, output_bias=True)).eval()
    with torch.no_grad():
        model.output.bias[7] = 50.0
    fast = for_inference(model, compute_type)
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 5))
    with torch.no_grad():
        assert (fast(src, tgt).argmax(-1) == 7).all()


SHIPPED = Path(__file__).resolve().parents[1] / "models" / "bible-es-en"


@pytest.mark.parametrize("compute_type", ["bfloat16", "int8"])
def test_low_precision_decoding_keeps_the_translations(compute_type):
    """bf16 and int8 change few translations of the shipped model and its BLEU little (the full-test
    check is benchmarks/translate_speed.py, docs/inference.md), and leave the float32 model untouched."""
    import sacrebleu

    from aiayn.evaluate import read_test_pairs
    from aiayn.train.checkpoint import load_model_dir

    model, vocab, _ = load_model_dir(SHIPPED)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src, refs = read_test_pairs(SHIPPED.parents[1] / "data" / "bible-es-en" / "test.tsv", limit=60)
    ref = Translator(model, vocab, DecodeConfig(beam=4)).translate(src)
    low = Translator(model, vocab, DecodeConfig(beam=4, compute_type=compute_type)).translate(src)
    same = sum(a == b for a, b in zip(ref, low))
    assert same >= 0.6 * len(src), (same, list(zip(ref, low))[:5])
    bleu = [sacrebleu.corpus_bleu(h, [refs]).score for h in (ref, low)]
    assert abs(bleu[0] - bleu[1]) < 1.5, bleu
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_tokenized_bleu_is_the_papers_kind():
    """Moses tokens, compounds split as t2t's get_ende_bleu.sh does, then BLEU with no tokenization of its
    own — equal to sacreBLEU's 'none' tokenizer on text tokenized by hand that way."""
    import sacrebleu

    from aiayn.evaluate import score_translations, tokenized_bleu

    hyp, ref = ["It is a well-known truth, they said."], ["It is well-known, they said."]
    by_hand_h = ["It is a well ##AT##-##AT## known truth , they said ."]
    by_hand_r = ["It is well ##AT##-##AT## known , they said ."]
    expected = sacrebleu.corpus_bleu(by_hand_h, [by_hand_r], tokenize="none", force=True).score
    assert tokenized_bleu(hyp, ref, "en") == pytest.approx(expected)
    assert tokenized_bleu(ref, ref, "en") == pytest.approx(100.0)
    scores = score_translations(hyp, ref, tokenize="intl", tokenized_bleu_lang="en")
    assert "tok:intl" in scores["signature"] and scores["tokenized_bleu"] == round(expected, 2)
    with pytest.raises(ValueError, match="unknown sacreBLEU tokenizer 'bogus'"):
        score_translations(hyp, ref, tokenize="bogus")


@pytest.mark.parametrize("arch", ["encoder-decoder", "rnnsearch"])
def test_details_of_a_batch_are_those_of_each_sentence_alone(arch):
    """`translate --format jsonl`'s details (token log-probabilities, alignment) come from one forced pass per
    batch: the same as one sentence at a time, padding and neighbours notwithstanding."""
    from aiayn.data.vocab import CharVocab
    from aiayn.model import build_model

    vocab = CharVocab.train(["abcdefghij"])
    torch.manual_seed(0)
    kw = {"d_model": 32, "d_ff": 64} if arch == "encoder-decoder" else {"d_model": 16, "hidden_size": 32}
    model = build_model(preset("tiny" if arch == "encoder-decoder" else "rnnsearch-small", vocab_size=len(vocab),
                               dropout=0.0, **kw)).eval()
    translator = Translator(model, vocab, DecodeConfig(beam=2, nbest=2, max_len_a=0, max_len_b=8))
    srcs = [vocab.encode(t) for t in ["abc", "jihgfedcba", "a", "bbbbbb", "cadge"]]
    hyps = translator.translate_ids(srcs)
    together = translator.details(srcs, hyps)
    alone = [translator.details([s], [h])[0] for s, h in zip(srcs, hyps)]
    assert len({len(d["source_tokens"]) for d in together}) > 1  # sentences of different lengths shared a batch
    for a, b in zip(together, alone):
        assert {k: v for k, v in a.items() if k != "token_log_probs"} == {k: v for k, v in b.items() if k != "token_log_probs"}
        assert a["token_log_probs"] == pytest.approx(b["token_log_probs"], abs=1e-5)
        assert sum(a["token_log_probs"]) == pytest.approx(a["log_prob"], abs=1e-4)
        # a hypothesis cut at the length limit has 8 tokens and no </s>; one that ended, fewer and its </s>
        assert (a["tokens"][-1] == "</s>") == a["ended"] == (len(a["tokens"]) - a["ended"] < 8)
        assert len(a["alignment"]) == len(a["tokens"]) and max(a["alignment"]) < len(a["source_tokens"])
    if arch == "rnnsearch":  # untrained, it never says </s> within 8 tokens: make it say so at once
        model.output.bias.data[EOS_ID] += 5.0
    greedy = Translator(model, vocab, DecodeConfig(beam=1, max_len_a=0, max_len_b=8))
    seen = {a["ended"] for a in together}
    for a in greedy.details(srcs, greedy.translate_ids(srcs)):
        assert sum(a["token_log_probs"]) == pytest.approx(a["log_prob"], abs=1e-4)
        assert (a["tokens"][-1] == "</s>") == a["ended"] == (len(a["tokens"]) - a["ended"] < 8)
        seen.add(a["ended"])
    assert seen == {True, False}  # both kinds were checked
