"""Any HuggingFace BERT directory, unchanged, through the one loader and the server.

The references are transformers and sentence-transformers themselves, on tiny random directories
they wrote (tests/hf_testing.py; nothing downloaded): ``/embed`` equals
``SentenceTransformer(dir).encode`` for every pooling, with and without Normalize; ``/fill-mask``
and ``POST /`` equal ``pipeline("fill-mask")`` with a 30,522-token vocabulary whose ``[PAD]`` is
id 3, and on a cased model; BertForPreTraining and bare BertModel directories load with what they
can do; bad directories are refused in one sentence while the old model keeps serving; the
trainer's ``init_from`` continues pretraining a sentence-transformers model. One server (one
models root) serves them all in turn through hot-swaps.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from app_testing import serve_config
from fastapi.testclient import TestClient
from hf_testing import BERT_VOCAB_SIZE, hf_bert_dir, offline, st_dir

from app.main import create_app

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKEN = "hf-checkpoints-admin-token-0123456789"
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")
EMBED_TEXTS = [
    "a dog is an animal .",
    "the river bank at night",
    "an abstract concept formed by extracting common features",
]
MASK_TEXTS = [
    "a dog is an [MASK] .",
    "the [MASK] of a river",
    "a [MASK] concept formed by extracting [MASK] features",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The models root: transformers and sentence-transformers directories, as they write them."""
    offline()
    root = tmp_path_factory.mktemp("hf-models")
    base = hf_bert_dir(root / "base", head="BertModel", pad_id=3, seed=1)
    for pooling in POOLINGS:
        for normalize in (True, False):
            st_dir(root / f"st-{pooling}-{normalize}", base, pooling=pooling, normalize=normalize)
    hf_bert_dir(root / "mlm30k", vocab_size=BERT_VOCAB_SIZE, pad_id=3, seed=2)
    hf_bert_dir(root / "cased", lowercase=False, seed=3)
    hf_bert_dir(root / "pretraining", head="BertForPreTraining", seed=4)
    _legacy_st_dir(
        root / "st-legacy",
        hf_bert_dir(root / "base-cased", head="BertModel", lowercase=False, seed=5),
    )
    return root


def _legacy_st_dir(directory, base):
    """A sentence-transformers directory as older versions wrote it (and hub snapshots hold):
    module types under ``sentence_transformers.models``, the Pooling config's per-mode flags, no
    2_Normalize folder, and sentence_bert_config.json's max_seq_length and do_lower_case."""
    st_dir(directory, base, pooling="max", normalize=True)
    modules = json.loads((directory / "modules.json").read_text())
    for module, kind in zip(modules, ("Transformer", "Pooling", "Normalize"), strict=True):
        module["type"] = f"sentence_transformers.models.{kind}"
    (directory / "modules.json").write_text(json.dumps(modules))
    shutil.rmtree(directory / "2_Normalize")
    flags = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    pooling = {f"pooling_mode_{f}": f == "max_tokens" for f in flags}
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **pooling})
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8, "do_lower_case": True})
    )
    return directory


@pytest.fixture(scope="module")
def client(models):
    token = models.parent / "hf-token"
    token.write_text(TOKEN)
    # Pinned: every answer here is compared with transformers / sentence-transformers in fp32.
    config = serve_config(
        models / "mlm30k",
        models_root=models,
        admin_token_file=token,
        max_input_tokens=128,
        precision="fp32",
    )
    with TestClient(create_app(config)) as c:
        yield c


def _reload(client, name: str):
    return client.post(
        "/admin/reload", json={"checkpoint": name}, headers={"Authorization": f"Bearer {TOKEN}"}
    )


def _serve(client, name: str) -> dict:
    r = _reload(client, name)
    assert r.status_code == 200, r.text
    return client.get("/info").json()["model"]


def _pipeline(directory):
    return transformers.pipeline("fill-mask", model=str(directory), device="cpu")


def _assert_same_candidates(ours: list[dict], theirs: list[dict]) -> None:
    assert [c["token"] for c in ours] == [c["token"] for c in theirs]
    assert [c["token_str"] for c in ours] == [c["token_str"] for c in theirs]
    np.testing.assert_allclose(
        [c["score"] for c in ours], [c["score"] for c in theirs], atol=1e-5, rtol=0
    )


# --- equality with the references --------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_embed_equals_sentence_transformers(client, models, pooling, normalize):
    name = f"st-{pooling}-{normalize}"
    info = _serve(client, name)
    caps = info["capabilities"]
    assert caps["pooling"] == pooling and caps["normalize"] is normalize
    assert caps["fill_mask"] is False and caps["sentence_transformers"] is True
    assert caps["kind"] == "BertModel" and info["config"]["pooling"] == pooling

    reference = sentence_transformers.SentenceTransformer(str(models / name), device="cpu")
    theirs = reference.encode(EMBED_TEXTS, convert_to_numpy=True)
    r = client.post("/embed", json={"inputs": EMBED_TEXTS})  # the model's defaults
    assert r.status_code == 200, r.text
    ours = np.array(r.json())
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(
        np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-5
    )
    if not normalize:  # the test must be able to tell the two apart
        assert abs(np.linalg.norm(ours, axis=1) - 1).max() > 0.01
    # /v1/embeddings uses the same defaults; a request may still choose.
    data = client.post("/v1/embeddings", json={"input": EMBED_TEXTS}).json()["data"]
    np.testing.assert_allclose([d["embedding"] for d in data], ours, atol=1e-6)
    unit = np.array(client.post("/embed", json={"inputs": EMBED_TEXTS, "normalize": True}).json())
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_the_older_sentence_transformers_layout_with_its_settings(client, models):
    caps = _serve(client, "st-legacy")["capabilities"]
    assert (caps["pooling"], caps["normalize"], caps["max_tokens"]) == ("max", True, 8)
    reference = sentence_transformers.SentenceTransformer(str(models / "st-legacy"), device="cpu")
    assert reference.max_seq_length == 8
    texts = ["The DOG is an Animal", "An abstract Concept formed by extracting common features"]
    theirs = reference.encode(texts, convert_to_numpy=True)  # lowercased, cut at 8 tokens
    r = client.post("/embed", json={"inputs": texts})
    assert r.status_code == 422 and "more than the limit of 8" in r.json()["error"]
    ours = np.array(client.post("/embed", json={"inputs": texts, "truncate": True}).json())
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    lower = client.post("/embed", json={"inputs": [t.lower() for t in texts], "truncate": True})
    assert lower.json() == ours.tolist()  # do_lower_case: the case of the input does not matter


def test_fill_mask_equals_the_pipeline_with_a_30k_vocabulary_and_pad_at_3(client, models):
    info = _serve(client, "mlm30k")
    assert info["vocab_size"] == BERT_VOCAB_SIZE
    assert (
        info["capabilities"]["fill_mask"] is True
        and info["capabilities"]["kind"] == "BertForMaskedLM"
    )
    assert not (models / "mlm30k" / "vocab.txt").exists()  # transformers 5 wrote tokenizer.json
    pipe = _pipeline(models / "mlm30k")
    assert pipe.tokenizer.pad_token_id == 3 and len(pipe.tokenizer) == BERT_VOCAB_SIZE
    body = client.post("/fill-mask", json={"inputs": MASK_TEXTS, "top_k": 5}).json()
    for text, ours in zip(MASK_TEXTS, body["predictions"], strict=True):
        theirs = pipe(text, top_k=5)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: one level less
        assert len(ours) == len(theirs) == text.count("[MASK]")
        for our_mask, their_mask in zip(ours, theirs, strict=True):
            _assert_same_candidates(our_mask, their_mask)
    assert body["predictions"][0][0][0]["score"] > 10 / BERT_VOCAB_SIZE  # peaked, not uniform
    # POST / in the pipeline's own shapes: one text with one mask is a flat list of candidates.
    flat = client.post("/", json={"inputs": MASK_TEXTS[0], "parameters": {"top_k": 3}}).json()
    _assert_same_candidates(flat, pipe(MASK_TEXTS[0], top_k=3))
    targets = ["the", "a", "of", "that"]
    flat = client.post(
        "/", json={"inputs": MASK_TEXTS[0], "parameters": {"targets": targets}}
    ).json()
    _assert_same_candidates(flat, pipe(MASK_TEXTS[0], targets=targets))
    nested = client.post("/", json={"inputs": MASK_TEXTS[2], "parameters": {}}).json()
    for our_mask, their_mask in zip(nested, pipe(MASK_TEXTS[2]), strict=True):
        _assert_same_candidates(our_mask, their_mask)
    # Padding in a batch uses id 3 and changes nothing.
    ids = client.post("/tokenize", json={"inputs": MASK_TEXTS}).json()
    for text, tokens in zip(MASK_TEXTS, ids, strict=True):
        assert [t["id"] for t in tokens] == pipe.tokenizer(text)["input_ids"]


def test_a_cased_model_tokenizes_predicts_and_embeds_as_transformers(client, models):
    info = _serve(client, "cased")
    assert info["lowercase"] is False
    hf_tok = transformers.AutoTokenizer.from_pretrained(models / "cased")
    texts = ["The Dog is an Animal in Zürich .", "A river Bank [MASK] the City"]
    for text, tokens in zip(
        texts, client.post("/tokenize", json={"inputs": texts}).json(), strict=True
    ):
        assert [t["id"] for t in tokens] == hf_tok(text)["input_ids"], text
    ids = [t["id"] for t in client.post("/tokenize", json={"inputs": "Dog dog"}).json()[0]]
    assert ids[1] != ids[2]  # cased: "Dog" and "dog" differ
    pipe = _pipeline(models / "cased")
    ours = client.post("/fill-mask", json={"inputs": texts[1], "top_k": 5}).json()
    _assert_same_candidates(ours["predictions"][0][0], pipe(texts[1], top_k=5))
    bert = transformers.AutoModel.from_pretrained(models / "cased").eval()
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    got = torch.tensor(client.post("/embed", json={"inputs": texts}).json())
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-4)


def test_pretraining_and_bare_encoder_directories(client, models):
    info = _serve(client, "pretraining")
    assert info["capabilities"]["kind"] == "BertForPreTraining"
    assert info["capabilities"]["fill_mask"] is True
    ours = client.post("/fill-mask", json={"inputs": MASK_TEXTS[0], "top_k": 3}).json()
    _assert_same_candidates(
        ours["predictions"][0][0], _pipeline(models / "pretraining")(MASK_TEXTS[0], top_k=3)
    )

    info = _serve(client, "base")  # a BertModel: embeddings only
    caps = info["capabilities"]
    assert caps["fill_mask"] is False and caps["kind"] == "BertModel"
    assert caps["sentence_transformers"] is False and caps["normalize"] is True
    for path, body in (
        ("/fill-mask", {"inputs": MASK_TEXTS[0]}),
        ("/", {"inputs": MASK_TEXTS[0], "parameters": {"top_k": 2}}),
        ("/", {"inputs": "good movie", "parameters": {"function_to_apply": "softmax"}}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error_type"] == "Unsupported" and "\n" not in r.json()["error"]
    bert = transformers.AutoModel.from_pretrained(models / "base").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(models / "base")
    enc = hf_tok(EMBED_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    got = torch.tensor(client.post("/embed", json={"inputs": EMBED_TEXTS}).json())
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-4)


# --- refusals -----------------------------------------------------------------------------------


def _variant(models, name: str, source: str):
    target = models / name
    if not target.exists():
        shutil.copytree(models / source, target)
    return target


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def bad(models):
    """Directories the loader must refuse, each with the fragment its one sentence must hold."""
    cases = {}
    d = _variant(models, "bad-roberta", "mlm30k")
    _edit_json(d / "config.json", model_type="roberta", architectures=["RobertaForMaskedLM"])
    cases[d.name] = "architecture RobertaForMaskedLM is not supported"
    d = _variant(models, "bad-classifier", "cased")
    # Named a classifier, but the copied BertForMaskedLM config has no labels (id2label).
    _edit_json(d / "config.json", architectures=["BertForSequenceClassification"])
    cases[d.name] = "a sequence classifier's config needs id2label"
    d = _variant(models, "bad-no-vocab", "cased")
    for name in ("tokenizer.json", "vocab.txt"):
        (d / name).unlink(missing_ok=True)
    cases[d.name] = "no vocabulary (neither vocab.txt nor tokenizer.json"
    d = _variant(models, "bad-pickle", "cased")
    state = transformers.AutoModelForMaskedLM.from_pretrained(d).state_dict()
    torch.save(state, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    cases[d.name] = "the server loads only safetensors (found pytorch_model.bin"
    d = _variant(models, "bad-dense", "st-mean-True")
    modules = json.loads((d / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "x.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    cases[d.name] = "lists Transformer, Pooling, Dense, Normalize; only Transformer, Pooling"
    d = _variant(models, "bad-weightedmean", "st-mean-False")
    _edit_json(d / "1_Pooling" / "config.json", pooling_mode="weightedmean")
    cases[d.name] = "pooling 'weightedmean' is not supported"
    return cases


def test_bad_directories_are_refused_in_one_sentence_and_the_old_model_keeps_serving(client, bad):
    before = _serve(client, "cased")["version"]
    probe = client.post("/embed", json={"inputs": EMBED_TEXTS}).json()
    for name, fragment in bad.items():
        r = _reload(client, name)
        assert r.status_code == 422, (name, r.text)
        body = r.json()
        assert body["error_type"] == "InvalidCheckpoint", body
        assert fragment in body["error"], (name, body["error"])
        assert "\n" not in body["error"] and "Traceback" not in body["error"]
        assert client.get("/health").json()["model"] == before
    assert client.post("/embed", json={"inputs": EMBED_TEXTS}).json() == probe


def test_bert_serve_startup_on_a_bad_directory_says_why_without_a_traceback(bad, models, capfd):
    from app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            ["--checkpoint", str(models / "bad-no-vocab"), "--port", "0", "--log-level", "warning"]
        )
    assert exit_info.value.code != 0
    err = capfd.readouterr().err
    assert "bert-serve: cannot load checkpoint" in err and "no vocabulary" in err
    assert "Traceback" not in err


# --- the other users of the one loader ----------------------------------------------------------


def test_bert_convert_reports_the_kind_and_converts_a_sentence_transformers_directory(
    models, tmp_path, capsys
):
    from model import BertForMaskedLM
    from model.convert import main as convert_main

    st = models / "st-max-False"
    assert convert_main(["--check", str(st)]) == 0
    out = capsys.readouterr().out
    assert "BertModel in a sentence-transformers directory, embeddings only" in out
    assert "max pooling" in out and "normalized" not in out
    assert convert_main(["--from-hf", str(st), "--out", str(tmp_path / "ours")]) == 0
    model = BertForMaskedLM.from_pretrained(tmp_path / "ours")
    assert model.mlm_head is None and model.config.pooling == "max"
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["architectures"] == ["BertModel"]
    assert transformers.AutoModel.from_pretrained(tmp_path / "ours") is not None


def test_init_from_continues_pretraining_a_sentence_transformers_model(models, tmp_path):
    from train_testing import TINY_TRAIN, write_corpus

    from model import BertForMaskedLM, load_checkpoint
    from training.pretrain.cli import main as train_main

    config = tmp_path / "init.yaml"
    config.write_text(yaml.safe_dump({"model": {}, "train": {**TINY_TRAIN, "lr": 1e-9}}))
    corpus = write_corpus(tmp_path / "train.txt", 200)
    out = tmp_path / "run"
    argv = ["--config", str(config), "--corpus", str(corpus), "--output-dir", str(out)]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--log-level", "WARNING"]
    argv += ["--init_from", str(models / "st-cls-True"), "--max-steps", "2"]
    assert train_main(argv) == 0
    start = load_checkpoint(models / "st-cls-True", BertForMaskedLM).model.state_dict()
    done = load_checkpoint(out / "final", BertForMaskedLM)
    assert done.capabilities.fill_mask  # a fresh MLM head was trained beside the encoder
    state = done.model.state_dict()
    for name, p in start.items():  # lr 1e-9: two steps cannot move the encoder
        assert (state[name] - p).abs().max() < 1e-6, name
    tokens = (out / "final" / "vocab.txt").read_text().splitlines()
    assert tokens.index("[PAD]") == 3  # the checkpoint's vocabulary, [PAD] where it was
