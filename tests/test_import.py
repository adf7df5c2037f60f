"""`aiayn import --from hf`: a Hugging Face Marian model with OPUS-MT's conventions (</s> = 0, <pad> = V−1 as
the decoder's start, SiLU, a non-zero final_logits_bias, separate source and target SentencePiece models)
becomes an aiayn model that tokenizes, scores and translates as Hugging Face does. (The round trip
export → import of aiayn's own models is in test_export.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aiayn.config import BOS_ID, PAD_ID
from aiayn.data.corpus import read_parallel
from aiayn.importers import ImportRefused

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def _spm(texts: list[str], size: int) -> bytes:
    import io

    import sentencepiece as spm

    out = io.BytesIO()  # Marian's own SentencePiece models: <unk> = 0, <s> = 1, </s> = 2, no <pad>
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=out, vocab_size=size, model_type="unigram",
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    return out.getvalue()


@pytest.fixture(scope="module")
def opus_like(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """A randomly initialised MarianMTModel saved as OPUS-MT models are: joint vocab.json over the pieces of
    two SentencePiece models, </s> first, <pad> last."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    d = tmp_path_factory.mktemp("opus-like")
    pairs = [p for p, _ in zip(read_parallel(ROOT / "data/bible-es-en/dev.tsv"), range(400))]
    src, tgt = [p.src for p in pairs], [p.tgt for p in pairs]
    protos = {"source.spm": _spm(src, 300), "target.spm": _spm(tgt, 250)}
    for name, proto in protos.items():
        (d / name).write_bytes(proto)
    pieces: list[str] = []
    for proto in protos.values():
        sp = spm.SentencePieceProcessor(model_proto=proto)
        pieces += [sp.id_to_piece(i) for i in range(3, sp.get_piece_size()) if sp.id_to_piece(i) not in pieces]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tok = MarianTokenizer(str(d / "source.spm"), str(d / "target.spm"), str(d / "vocab.json"))
    tok.save_pretrained(d)
    v = len(vocab)
    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=v, decoder_vocab_size=v, d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       activation_function="swish", scale_embedding=True, pad_token_id=v - 1, eos_token_id=0,
                       decoder_start_token_id=v - 1, forced_eos_token_id=0, max_position_embeddings=512, init_std=0.2)
    hf = MarianMTModel(cfg).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(0, 1.0)
        hf.final_logits_bias[0, 0] += 3.5  # </s> likely enough that greedy outputs end before the limit
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(d)
    return d, src, tgt


def _hf_to_ours(order: list[int]) -> dict[int, int]:
    return {h: i for i, h in reversed(list(enumerate(order)))}  # the first aiayn id of each HF id


def test_opus_like_marian_imports_with_the_same_tokens_scores_and_translations(opus_like, tmp_path):
    from transformers import MarianMTModel, MarianTokenizer

    import aiayn
    from aiayn.decode.translate import DecodeConfig, Translator
    from aiayn.importers.hf import from_hf

    d, src, tgt = opus_like
    from_hf(d, tmp_path / "m")
    model = aiayn.load(tmp_path / "m", device="cpu")
    cfg = model.network.cfg
    assert (cfg.activation, cfg.pe_layout, cfg.norm, cfg.output_bias, cfg.ln_eps) == ("silu", "concat", "post", True, 1e-5)
    tok, hf = MarianTokenizer.from_pretrained(d), MarianMTModel.from_pretrained(d).eval()
    v = hf.config.vocab_size
    pieces = model.vocab.pieces(range(len(model.vocab)))
    order = [tok.convert_tokens_to_ids(p) if i != BOS_ID else v - 1 for i, p in enumerate(pieces)]
    assert order[:4] == [v - 1, 1, v - 1, 0] and sorted(set(order)) == list(range(v))
    to_ours = _hf_to_ours(order)

    # Tokenization: the same pieces (the source side with source.spm, the target side with target.spm).
    sentences, targets = src[:12], tgt[:12]
    ours_src = model.vocab.encode_batch(sentences)
    assert ours_src == [[to_ours[i] for i in ids[:-1]] for ids in tok(sentences)["input_ids"]]
    ours_tgt = model.vocab.encode_batch(targets, side="target")
    assert ours_tgt == [[to_ours[i] for i in ids[:-1]] for ids in tok(text_target=targets)["input_ids"]]

    # Scores: log P(target | source) equal to Hugging Face's teacher-forced log-softmax, row for row.
    with torch.no_grad():
        for s, t in zip(sentences[:4], targets[:4]):
            x = tok(s, text_target=t, return_tensors="pt")
            labels = x["labels"]
            start = torch.full((1, 1), v - 1)
            theirs = hf(input_ids=x["input_ids"], decoder_input_ids=torch.cat([start, labels[:, :-1]], 1)).logits
            theirs = theirs.log_softmax(-1)
            logp_theirs = theirs.gather(-1, labels[..., None]).sum()
            logp_ours = model.score([s], [t])[0]
            assert logp_ours == pytest.approx(float(logp_theirs), abs=1e-3)
            src_ours = torch.tensor([[to_ours[i] for i in x["input_ids"][0].tolist()]])
            tgt_ours = torch.tensor([[BOS_ID] + [to_ours[i] for i in labels[0, :-1].tolist()]])
            ours = model.network(src_ours, tgt_ours).log_softmax(-1)
            torch.testing.assert_close(ours[..., [i for i in range(len(order)) if i != PAD_ID]],
                                       theirs[..., [order[i] for i in range(len(order)) if i != PAD_ID]],
                                       atol=1e-4, rtol=1e-4)

    # Greedy translations: the same tokens as generate() (with <pad> banned, as OPUS-MT configs do) and
    # the same text as MarianTokenizer's decoding with the target SentencePiece model.
    limit = 20
    translator = Translator(model.network, model.vocab, DecodeConfig(beam=1, max_len_a=0, max_len_b=limit))
    ours = [h[0].tokens for h in translator.translate_ids(ours_src)]
    ended = 0
    for s, o in zip(sentences, ours):
        gen = hf.generate(**tok(s, return_tensors="pt"), num_beams=1, do_sample=False, max_new_tokens=limit + 1,
                          bad_words_ids=[[v - 1]], forced_eos_token_id=None)[0, 1:].tolist()
        ended += 0 in gen
        gen = gen[:gen.index(0)] if 0 in gen else gen[:limit]
        assert o == [to_ours[i] for i in gen]
        text = tok.decode(gen, skip_special_tokens=True, use_source_tokenizer=False)
        assert model.vocab.decode(o) == text
    assert ended >= 3 and sum(map(len, ours)) >= 20  # not a test of empty outputs


@pytest.fixture(scope="module")
def opus_separate(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """A MarianMTModel with a vocabulary per side (Marian's --no-shared-vocab, HF's separate_vocabs): vocab.json
    over the source SentencePiece model's pieces, target_vocab.json over the target's, of different sizes; an
    embedding matrix per side, the output layer tied to the target's."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    d = tmp_path_factory.mktemp("opus-separate")
    pairs = [p for p, _ in zip(read_parallel(ROOT / "data/bible-es-en/dev.tsv"), range(400))]
    src, tgt = [p.src for p in pairs], [p.tgt for p in pairs]
    sizes = {}
    for name, texts, size, vocab_file in (("source.spm", src, 300, "vocab.json"), ("target.spm", tgt, 220, "target_vocab.json")):
        proto = _spm(texts, size)
        (d / name).write_bytes(proto)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        vocab = {"</s>": 0, "<unk>": 1, **{sp.id_to_piece(i): i - 1 for i in range(3, sp.get_piece_size())}}
        vocab["<pad>"] = len(vocab)
        (d / vocab_file).write_text(json.dumps(vocab, ensure_ascii=False))
        sizes[vocab_file] = len(vocab)
    tok = MarianTokenizer(str(d / "source.spm"), str(d / "target.spm"), str(d / "vocab.json"),
                          target_vocab_file=str(d / "target_vocab.json"), separate_vocabs=True)
    tok.save_pretrained(d)
    vs, vt = sizes["vocab.json"], sizes["target_vocab.json"]
    torch.manual_seed(1)
    cfg = MarianConfig(vocab_size=vs, decoder_vocab_size=vt, share_encoder_decoder_embeddings=False, d_model=32,
                       encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, activation_function="swish", scale_embedding=True,
                       pad_token_id=vt - 1, eos_token_id=0, decoder_start_token_id=vt - 1, forced_eos_token_id=0,
                       max_position_embeddings=512, init_std=0.2)
    hf = MarianMTModel(cfg).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(0, 1.0)
        hf.final_logits_bias[0, 0] += 3.5
    hf.save_pretrained(d)
    return d, src, tgt


def test_a_marian_model_with_a_vocabulary_per_side_imports_as_separate_vocabularies(opus_separate, tmp_path):
    """Each side's tokens are MarianTokenizer's (the source through vocab.json, the target through
    target_vocab.json), the teacher-forced log-probabilities and the greedy translations are HF's."""
    from transformers import MarianMTModel, MarianTokenizer

    import aiayn
    from aiayn.decode.translate import DecodeConfig, Translator
    from aiayn.importers.hf import from_hf

    d, src, tgt = opus_separate
    from_hf(d, tmp_path / "m")
    model = aiayn.load(tmp_path / "m", device="cpu")
    tok, hf = MarianTokenizer.from_pretrained(d), MarianMTModel.from_pretrained(d).eval()
    vs, vt = hf.config.vocab_size, hf.config.decoder_vocab_size
    cfg = model.network.cfg
    assert model.vocab.kind == "separate" and (cfg.tie, cfg.vocab_size, cfg.tgt_vocab_size) == ("two_way", vs + 1, vt + 1)
    src_vocab, tgt_vocab = json.loads((d / "vocab.json").read_text()), json.loads((d / "target_vocab.json").read_text())
    src_order = [src_vocab[p] if i != BOS_ID else vs - 1 for i, p in enumerate(model.vocab.source.piece_list)]
    tgt_order = [tgt_vocab[p] if i != BOS_ID else vt - 1 for i, p in enumerate(model.vocab.target.piece_list)]
    to_src, to_tgt = _hf_to_ours(src_order), _hf_to_ours(tgt_order)
    sentences, targets = src[:10], tgt[:10]
    ours_src = model.vocab.encode_batch(sentences)
    assert ours_src == [[to_src[i] for i in ids[:-1]] for ids in tok(sentences)["input_ids"]]
    assert model.vocab.encode_batch(targets, side="target") == [
        [to_tgt[i] for i in ids[:-1]] for ids in tok(text_target=targets)["input_ids"]]
    with torch.no_grad():
        for s, t in zip(sentences[:4], targets[:4]):
            x = tok(s, text_target=t, return_tensors="pt")
            labels = x["labels"]
            theirs = hf(input_ids=x["input_ids"],
                        decoder_input_ids=torch.cat([torch.full((1, 1), vt - 1), labels[:, :-1]], 1)).logits.log_softmax(-1)
            assert model.score([s], [t])[0] == pytest.approx(float(theirs.gather(-1, labels[..., None]).sum()), abs=1e-3)
    limit = 20
    translator = Translator(model.network, model.vocab, DecodeConfig(beam=1, max_len_a=0, max_len_b=limit))
    ours = [h[0].tokens for h in translator.translate_ids(ours_src)]
    for s, o in zip(sentences, ours):
        gen = hf.generate(**tok(s, return_tensors="pt"), num_beams=1, do_sample=False, max_new_tokens=limit + 1,
                          bad_words_ids=[[vt - 1]], forced_eos_token_id=None)[0, 1:].tolist()
        gen = gen[:gen.index(0)] if 0 in gen else gen[:limit]
        assert o == [to_tgt[i] for i in gen]
        assert model.vocab.decode(o) == tok.decode(gen, skip_special_tokens=True)
    assert sum(map(len, ours)) >= 20


def test_a_multilingual_target_tag_stays_one_piece(opus_like, tmp_path):
    """`>>fra<<` in front of a sentence is one token of the vocabulary, as MarianTokenizer keeps it."""
    from aiayn.data.vocab import PieceVocab

    d, src, _ = opus_like
    pieces = ["<pad>", "<unk>", "<s>", "</s>", ">>fra<<", "▁a", "a"]
    v = PieceVocab(pieces, (d / "source.spm").read_bytes(), (d / "target.spm").read_bytes())
    assert v.encode(">>fra<< a")[0] == 4
    assert v.encode(">>deu<< a")[0] != 4  # not in the list: no tag, the text is split as it is
    v.save(tmp_path)
    assert PieceVocab.load(tmp_path / "pieces.json").pieces(range(7)) == pieces


def test_fine_tuning_an_imported_model_reads_its_vocabulary(opus_like, tmp_path):
    """prepare --vocab-from MODEL encodes new data with the imported tokenization; train.init_from starts
    from the imported weights and trains."""
    import aiayn
    from aiayn.importers.hf import from_hf

    d, src, tgt = opus_like
    from_hf(d, tmp_path / "m")
    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src[:60], tgt[:60])), encoding="utf-8")
    aiayn.prepare(train=str(corpus), dev=str(corpus), out=str(tmp_path / "data"), vocab_from=str(tmp_path / "m"))
    assert (tmp_path / "data" / "pieces.json").is_file()
    result = aiayn.fit(train={"data": str(tmp_path / "data"), "out": str(tmp_path / "run"),
                              "init_from": str(tmp_path / "m"), "max_steps": 3, "warmup": 1,
                              "eval_bleu_sentences": 0, "threads": 1, "save_every": 3})
    assert result["step"] == 3
    tuned = aiayn.load(tmp_path / "run" / "checkpoints" / "step_0000003", device="cpu")
    assert tuned.network.cfg.output_bias and tuned.vocab.kind == "pieces"
    assert isinstance(tuned.translate(src[0], beam=2), str)


def test_import_refuses_what_it_cannot_compute(opus_like, tmp_path):
    import shutil

    from aiayn.importers.hf import from_hf

    d, _, _ = opus_like
    for change, message in [({"activation_function": "gelu_new"}, "activation_function"),
                            ({"share_encoder_decoder_embeddings": False, "decoder_vocab_size": 7}, "decoder_vocab_size"),
                            ({"encoder_ffn_dim": 128}, "encoder_ffn_dim"),
                            ({"model_type": "bart"}, "model_type")]:
        bad = tmp_path / f"bad{len(message)}"
        shutil.copytree(d, bad)
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ImportRefused, match=message):
            from_hf(bad, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(ImportRefused, match="no such directory"):
        from_hf(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    from aiayn.atomic import OutputError

    with pytest.raises(OutputError):
        from_hf(d, tmp_path / "mine", overwrite=True)  # never replaces what aiayn did not write
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


def test_import_command_round_trips_the_shipped_model(tmp_path):
    """`aiayn export --to hf` then `aiayn import --from hf` on the shipped translator: the same translations."""
    import subprocess
    import sys

    def aiayn_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aiayn", *args], input=stdin, capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    model = ROOT / "models/bible-es-en"
    assert aiayn_cli("export", str(model), str(tmp_path / "hf"), "--to", "hf").returncode == 0
    done = aiayn_cli("import", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf")
    assert done.returncode == 0, done.stderr
    verses = "".join(p.src + "\n" for p, _ in zip(read_parallel(ROOT / "data/bible-es-en/test.tsv"), range(4)))
    before = aiayn_cli("translate", "--model", str(model), stdin=verses)
    after = aiayn_cli("translate", "--model", str(tmp_path / "back"), stdin=verses)
    assert before.returncode == after.returncode == 0
    assert after.stdout == before.stdout and len(after.stdout.splitlines()) == 4
    again = aiayn_cli("import", str(tmp_path / "hf"), str(tmp_path / "back"), "--from", "hf")
    assert again.returncode != 0 and again.stderr.startswith("aiayn: error:") and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = aiayn_cli("import", str(tmp_path / "nothing"), str(tmp_path / "x"), "--from", "hf")
    assert missing.stderr.strip().splitlines() == [f"aiayn: error: {tmp_path / 'nothing'}: no such directory"]


def test_an_imported_model_exports_back_with_its_two_sentencepiece_models(opus_like, tmp_path):
    """import → export --to hf: the export carries the imported model's own source.spm and target.spm, and
    MarianTokenizer reads it with aiayn's ids (the round trip in the other direction)."""
    from transformers import MarianTokenizer

    import aiayn
    from aiayn.export.hf import to_hf
    from aiayn.importers.hf import from_hf

    d, src, tgt = opus_like
    from_hf(d, tmp_path / "m")
    model = aiayn.load(tmp_path / "m", device="cpu")
    to_hf(model.network, model.vocab, tmp_path / "hf")
    for name in ("source.spm", "target.spm"):
        assert (tmp_path / "hf" / name).read_bytes() == (d / name).read_bytes()
    tok = MarianTokenizer.from_pretrained(tmp_path / "hf")
    assert [ids[:-1] for ids in tok(src[:5])["input_ids"]] == model.vocab.encode_batch(src[:5])
    assert [ids[:-1] for ids in tok(text_target=tgt[:5])["input_ids"]] == model.vocab.encode_batch(tgt[:5], side="target")
