"""Property tests with Hypothesis: arbitrary bytes, Unicode, configurations and request bodies either work
or get a clear error, never a traceback (issue 14). The default run is quick; deeper:

    python -m pytest tests/test_fuzz.py --hypothesis-profile=long
"""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from aiayn.config import ConfigError, preset  # noqa: E402
from aiayn.data.corpus import CorpusError, input_lines, read_parallel, read_text  # noqa: E402
from aiayn.data.vocab import CharVocab  # noqa: E402
from aiayn.decode.translate import BadInput, DecodeConfig, Translator  # noqa: E402
from aiayn.model import build_model  # noqa: E402
from aiayn.train.checkpoint import save_model_dir  # noqa: E402
from aiayn.train.loop import load_run_config  # noqa: E402

FILE_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
# Text with what breaks readers: separators, CR/LF, NUL, tabs, quotes, braces, surrogates, astral planes.
NASTY = st.text(st.sampled_from(list("ab \t\r\n\x00\"{}[]:,\\é中😀")) | st.characters(), max_size=80)


# --- corpus readers ------------------------------------------------------------------------------------
@FILE_SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".tsv", ".jsonl", ".txt"]))
def test_corpus_readers_take_any_bytes(tmp_path, data, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(data)
    try:
        pairs = list(read_parallel(path))
        assert all(isinstance(p.src, str) and isinstance(p.tgt, str) and "\x00" not in p.src + p.tgt for p in pairs)
    except CorpusError as e:
        assert str(path) in str(e)  # names the file (and the line)
    try:
        assert isinstance(read_text(path), str)
    except CorpusError as e:
        assert f"{path}:" in str(e)


@settings(deadline=None)
@given(data=st.binary(max_size=300))
def test_translation_input_lines_split_at_newline_only(data):
    lines = list(input_lines(io.BytesIO(data)))
    assert len(lines) == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    for line in lines:
        assert isinstance(line, (str, CorpusError))
        if isinstance(line, str):
            assert "\n" not in line


# --- vocabularies ---------------------------------------------------------------------------------------
@settings(deadline=None)
@given(train=st.text(min_size=1, max_size=60), text=st.text(max_size=60))
def test_char_vocab_round_trip_on_any_unicode(train, text):
    v = CharVocab.train([train])
    seen = "".join(c for c in text if c in v.index)
    assert v.decode(v.encode(seen)) == seen
    ids = v.encode(text)
    assert len(ids) == len(text) and all(0 < i < len(v) for i in ids)  # unseen → <unk>, never out of range


@pytest.fixture(scope="module")
def spm_vocab(toy_data):
    from aiayn.data.vocab import load_vocab

    return load_vocab(toy_data)


@settings(deadline=None)
@given(text=NASTY)
def test_sentencepiece_encodes_any_text_within_the_vocabulary(spm_vocab, text):
    text = text.encode("utf-8", "replace").decode("utf-8")  # what can reach it: decoded input is valid UTF-8
    ids = spm_vocab.encode(text)
    assert all(0 <= i < len(spm_vocab) for i in ids)
    assert isinstance(spm_vocab.decode(ids), str)


# --- configuration ---------------------------------------------------------------------------------------
VALUES = st.none() | st.booleans() | st.integers(-10**13, 10**13) | st.floats(allow_nan=True) | st.text(max_size=12) \
    | st.lists(st.integers(-3, 3), max_size=3)
MODEL_KEYS = ["preset", "arch", "vocab_size", "d_model", "d_ff", "n_heads", "n_encoder_layers", "dropout", "norm",
              "positional", "tie", "max_positions", "bogus"]
TRAIN_KEYS = ["keep_last", "save_every", "warmup", "lr", "lr_schedule", "update_freq", "max_tokens", "label_smoothing",
              "adam_betas", "dtype", "bogus"]


@settings(deadline=None)
@given(model=st.dictionaries(st.sampled_from(MODEL_KEYS), VALUES, max_size=4),
       train=st.dictionaries(st.sampled_from(TRAIN_KEYS), VALUES, max_size=4))
def test_any_configuration_loads_or_is_a_config_error(model, train):
    try:
        run = load_run_config(None, {"model": model, "train": train})
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    run.train.validate()
    run.model.validate()


@FILE_SETTINGS
@given(text=NASTY)
def test_any_yaml_file_loads_or_is_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_run_config(path)
    except ConfigError:
        pass
    except UnicodeDecodeError:  # written with a lone surrogate: not UTF-8; the CLI reports it as such
        pass
    except yaml.YAMLError:
        pytest.fail("a YAML error escaped as a traceback")


# --- translation input ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_translator(spm_vocab):
    torch.manual_seed(0)
    model = build_model(preset("tiny", vocab_size=len(spm_vocab), d_model=16, d_ff=32, n_heads=2)).eval()
    return Translator(model, spm_vocab, DecodeConfig(beam=2, max_len_b=3, max_len_a=0.0, max_input_tokens=30))


@settings(deadline=None)
@given(data=st.binary(max_size=200), skip=st.booleans())
def test_translate_any_bytes_gives_one_line_per_line_or_names_the_bad_line(tiny_translator, data, skip):
    lines = list(input_lines(io.BytesIO(data)))
    out = []
    try:
        for text in tiny_translator.stream(iter(lines), chunk=3, skip_invalid=skip):
            out.append(text)
    except BadInput as e:
        assert not skip and 1 <= e.line <= len(lines) and len(out) == e.line - 1
        return
    assert len(out) == len(lines)


# --- server request bodies --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_client(spm_vocab, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from aiayn.serve.app import Limits, create_app

    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=len(spm_vocab), d_model=16, d_ff=32, n_heads=2)
    d = save_model_dir(tmp_path_factory.mktemp("fuzzmodel") / "m", build_model(cfg), cfg, spm_vocab)
    with TestClient(create_app(d, Limits(max_texts=4, max_chars=200, max_tokens=40, max_beam=4)),
                    raise_server_exceptions=False) as c:
        yield c


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | NASTY,
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(NASTY, children, max_size=4),
                    max_leaves=10)
FIELDS = st.fixed_dictionaries({}, optional={"text": NASTY | JSON, "texts": st.lists(NASTY, max_size=5) | JSON,
                                             "beam_size": st.integers(-2, 70) | JSON, "nbest": st.integers(-1, 5),
                                             "alpha": st.floats() | JSON, "return_attention": st.booleans() | JSON})


@settings(deadline=None)
@given(body=FIELDS | JSON)
def test_any_translate_body_is_answered_without_a_server_error(fuzz_client, body):
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    r = fuzz_client.post("/translate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    if r.status_code == 200:
        items = r.json()["translations"]
        assert len(items) == (1 if isinstance(body.get("text"), str) else len(body["texts"]))
    else:
        assert r.json()["detail"]


@settings(deadline=None)
@given(body=st.binary(max_size=200))
def test_any_bytes_as_a_body_are_answered_without_a_server_error(fuzz_client, body):
    r = fuzz_client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    assert fuzz_client.post("/generate", content=body, headers={"content-type": "application/json"}).status_code in (400, 422)

