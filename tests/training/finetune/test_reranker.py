"""Fine-tuning a reranker (`bert-finetune --task rerank`): pair files and the holdout, the dev
split, pair rows as the tokenizer and the server make them, negatives and the loss, the loop
learning a toy set, exact resume, and the output served on /rerank with the scores of
transformers and sentence-transformers' CrossEncoder; `bert-eval --task rerank`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import serve_config
from fastapi.testclient import TestClient
from train_testing import DATA, FINETUNE_QUICK, TINY_MODEL, tiny_tokenizer

from app.main import create_app
from model import BertConfig, BertForMaskedLM, load_checkpoint
from tokenization import WordPieceTokenizer
from training.data.labelled import LabelledDataError
from training.data.pairs import retrieval_set_of, text_key
from training.data.rerank import (
    PairTokens,
    pair_batch,
    positives_by_query,
    read_rerank_pairs,
    split_dev,
)
from training.evaluation.cli import main as eval_main
from training.evaluation.rerank import nearest, reranked_scores
from training.finetune.cli import main as finetune_main
from training.finetune.config import FinetuneConfig
from training.finetune.reranker import RerankTuner, distill_loss, group_loss
from training.run.metrics import read_metrics
from training.run.options import TrainConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = {
    **FINETUNE_QUICK,
    "task": "rerank",
    "batch_size": 16,
    "lr": 5e-3,
    "hard_negatives": 3,
    "mine_top_k": 8,
    "rerank_top_k": 8,
    "log_every": 5,
}
TOPICS = 4


def _pretrained(directory: Path) -> Path:
    """A random tiny rotary encoder with an MLM head, without dropout (a toy learns faster)."""
    tok = tiny_tokenizer()
    sizes = {**TINY_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = BertConfig(vocab_size=tok.vocab_size, position_embedding_type="rotary", **sizes)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _toy(tmp: Path) -> tuple[Path, Path]:
    """A toy reranking task: TOPICS topics of 6 words each; a query and its text are 3 words of
    the same topic, drawn apart (they need not share a word). train.tsv: 400 queries over 6
    texts per topic; valid.tsv: 64 new queries against one new text per topic (chance: 1/4)."""
    words = [w for w in tiny_tokenizer().vocab if w.isalpha() and len(w) > 3][: TOPICS * 6]
    topics = [words[i * 6 : (i + 1) * 6] for i in range(TOPICS)]
    rng = random.Random(0)

    def text(t: int) -> str:
        return " ".join(rng.sample(topics[t], 3))

    def write(path: Path, queries: int, texts_per_topic: int) -> Path:
        texts = {t: [text(t) for _ in range(texts_per_topic)] for t in range(TOPICS)}
        rows = ["query\ttext"]
        rows += [f"{text(i % TOPICS)}\t{rng.choice(texts[i % TOPICS])}" for i in range(queries)]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return path

    return write(tmp / "train.tsv", 400, 6), write(tmp / "valid.tsv", 64, 1)


def _tuner(tmp: Path, out: Path, **cfg) -> RerankTuner:
    ckpt = tmp / "pretrained"
    if not ckpt.exists():
        _pretrained(ckpt)
    train, valid = (tmp / "train.tsv", tmp / "valid.tsv")
    if not train.exists():
        _toy(tmp)
    return RerankTuner(
        FinetuneConfig(**{**QUICK, **cfg}),
        checkpoint=ckpt,
        train_files=[train],
        valid_files=[valid],
        output_dir=out,
    )


# -- data -----------------------------------------------------------------------------------------


def test_pair_files_read_alike_and_the_holdout_is_never_trained_on(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tquery\nthe sea\twhere fish live\nx\ty\n")
    (tmp_path / "a.jsonl").write_text(
        '{"query": "where fish live", "text": "the sea"}\n{"query": "y", "text": "x"}\n'
    )
    (tmp_path / "a.csv").write_text('query,text\n"where fish live","the sea"\ny,x\n')
    got = [read_rerank_pairs([tmp_path / f"a.{e}"]) for e in ("tsv", "jsonl", "csv")]
    assert got[0] == got[1] == got[2]
    assert got[0].queries == ["where fish live", "y"] and got[0].candidates == ["the sea", "x"]

    # A gloss file as holdout drops pairs sharing any of its sentences, case aside.
    gloss = tmp_path / "held.txt"
    gloss.write_text("ocean: big water. WHERE  FISH LIVE\n")
    held = read_rerank_pairs([tmp_path / "a.tsv"], holdout=[gloss])
    assert held.queries == ["y"]
    # The bundled split: no valid sentence among the training pairs.
    rset = read_rerank_pairs([DATA / "wordnet.train.txt"], holdout=[DATA / "wordnet.valid.txt"])
    valid = read_rerank_pairs([DATA / "wordnet.valid.txt"])
    valid_keys = {text_key(t) for t in (*valid.queries, *valid.candidates)}
    assert len(rset.queries) > 40_000
    assert not valid_keys & {text_key(t) for t in (*rset.queries, *rset.candidates)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("query\tlabel\na\tb\n", "must name a 'query' and a 'text' column"),
        ("query\ttext\na\t \n", r"p.tsv:2: empty text"),
    ],
)
def test_bad_pair_files_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "p.tsv").write_text(content)
    with pytest.raises(LabelledDataError, match=message):
        read_rerank_pairs([tmp_path / "p.tsv"])


def test_the_dev_split_shares_no_sentence_with_training():
    pairs = [(f"q{i}", f"t{i % 10}") for i in range(40)] + [("q0", "t5"), ("shared", "t3")]
    rset = retrieval_set_of(pairs)
    train, dev = split_dev(rset, 3, seed=1)
    assert len(dev.candidates) == 3
    assert all(dev.candidates[t] in dev.candidates for t in dev.targets)
    dev_text = {*dev.queries, *dev.candidates}
    assert not dev_text & {*train.queries, *train.candidates}
    # Every pair lands in one of the two, or (a query asked of both sides) is dropped.
    assert len(train.queries) + len(dev.queries) <= len(pairs)
    assert [train.candidates[t] for t in train.targets] == [
        t for q, t in pairs if q in train.queries
    ]


def test_positives_count_every_pair_of_the_same_query():
    rset = retrieval_set_of([("a", "x"), ("b", "y"), ("a", "z")])
    assert positives_by_query(rset) == [frozenset({0, 2}), frozenset({1}), frozenset({0, 2})]
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    exclude = [sorted(p) for p in positives_by_query(rset)]
    assert nearest(scores, 5, exclude).tolist() == [[1], [2], [1]]  # k cut to what is left
    # Vectors scored in chunks against candidates give what the full matrix gives.
    q, c = torch.randn(7, 4), torch.randn(5, 4)
    assert torch.equal(nearest(q, 3, candidates=c, chunk=2), nearest(q @ c.T, 3))


@pytest.mark.parametrize(
    ("query", "text", "limit"),
    [
        ("what lives in the sea", "a fish swims in the deep water all day long", 64),
        ("what lives in the sea", "a fish swims in the deep water all day long", 10),  # text cut
        ("a very long query that alone fills almost everything here", "a fish", 9),  # fallback
    ],
)
def test_pair_rows_equal_the_tokenizers_and_the_servers(query, text, limit):
    tok = tiny_tokenizer()
    rset = retrieval_set_of([(query, text)])
    ids, mask, types = pair_batch(PairTokens.build(rset, tok), [(0, 0)], limit)
    try:
        enc = tok.encode(query, text, max_length=limit, truncation="only_second")
    except ValueError:  # the server's fallback when the query alone is too long
        enc = tok.encode(query, text, max_length=limit, truncation="longest_first")
    assert ids[0].tolist() == enc.ids and types[0].tolist() == enc.type_ids
    assert mask.sum() == len(enc.ids) <= limit


def test_group_loss_known_answers():
    logits = torch.tensor([[2.0, 0.0, 5.0]])
    all_valid = torch.ones(1, 3, dtype=torch.bool)
    masked = torch.tensor([[True, True, False]])
    expected = -torch.log_softmax(logits[:, :2], dim=1)[0, 0]
    torch.testing.assert_close(group_loss(logits, masked, "listwise"), expected)
    assert group_loss(logits, all_valid, "listwise") > group_loss(logits, masked, "listwise")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    )
    torch.testing.assert_close(group_loss(logits, masked, "bce"), bce)


def test_distill_loss_is_least_when_the_model_orders_as_the_teacher():
    teacher = torch.tensor([[0.9, 0.2, 0.5, 0.1]])  # cosines
    valid = torch.tensor([[True, True, True, False]])
    p = (teacher[:, :3] / 0.05).softmax(dim=1)
    entropy = -(p * p.log()).sum()
    torch.testing.assert_close(distill_loss(teacher / 0.05, teacher, valid, 0.05), entropy)
    # The masked column does not count, whatever its logit.
    odd = torch.tensor([[18.0, 4.0, 10.0, 99.0]])
    torch.testing.assert_close(distill_loss(odd, teacher, valid, 0.05), entropy)
    assert distill_loss(torch.zeros(1, 4), teacher, valid, 0.05) > entropy + 1.0


def test_reranked_scores_put_the_reranked_first_in_their_order():
    first = torch.tensor([[0.9, 0.5, 0.1, 0.7]])
    top = torch.tensor([[0, 3]])
    scores = reranked_scores(first, top, torch.tensor([[1.0, 3.0]]))
    assert scores[0].argsort(descending=True).tolist() == [3, 0, 1, 2]


# -- the loop -------------------------------------------------------------------------------------


def test_the_loop_learns_a_toy_set_and_mined_negatives_are_never_positives(tmp_path):
    tuner = _tuner(tmp_path, tmp_path / "out", max_steps=120, eval_every=60)
    for r, mined in enumerate(tuner.mined):
        assert not set(mined.tolist()) & tuner.positives[r]
    before = tuner.evaluate()
    result = tuner.train()
    assert result.finished and result.best_dir is not None
    after = tuner.last_valid
    assert before["recall@1"] <= 0.35  # about chance among one text per topic
    assert after["recall@1"] >= 0.7 and after["mrr"] >= before["mrr"] + 0.25, (before, after)
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:2])
    assert json.loads((result.best_dir / "eval.json").read_text())["mrr"] == result.best["mrr"]
    # Each evaluation centred the scores on the dev pairs (a shift: the figures do not move).
    again = tuner.evaluate()
    assert abs(again["mean_logit"]) < 1e-4 and again["mrr"] == pytest.approx(after["mrr"])


def test_resume_continues_bit_for_bit(tmp_path):
    run = {"max_steps": 12, "eval_every": 6, "dropout": 0.1, "distill_weight": 0.5}
    straight = _tuner(tmp_path, tmp_path / "a", **run)
    straight.train()
    first = _tuner(tmp_path, tmp_path / "b", **run)
    first.train(stop_after=6)
    with pytest.raises(TrainConfigError, match="--resume"):
        _tuner(tmp_path, tmp_path / "b", **run).train()
    resumed = _tuner(tmp_path, tmp_path / "b", **run)
    resumed.train(resume=True)
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.best == straight.best
    # Other data: refused, naming the run.
    (tmp_path / "valid.tsv").write_text("query\ttext\nsomething new\tanother text\n")
    other = _tuner(tmp_path, tmp_path / "b", **{**run, "max_steps": 14})
    with pytest.raises(TrainConfigError, match="other data"):
        other.train(resume=True)


def test_bce_rerankers_keep_the_sigmoid(tmp_path):
    tuner = _tuner(tmp_path, tmp_path / "out", max_steps=4, eval_every=4, loss="bce")
    result = tuner.train()
    caps = load_checkpoint(result.best_dir, BertForMaskedLM).capabilities
    assert (caps.score_activation, caps.cross_encoder) == ("sigmoid", True)
    assert "score_shift" not in result.best  # BCE's logits are calibrated: not centred


def test_config_refuses_what_a_reranker_cannot_use():
    with pytest.raises(TrainConfigError, match="loss"):
        FinetuneConfig(task="rerank", loss="pairwise")
    with pytest.raises(TrainConfigError, match="a query needs a negative"):
        FinetuneConfig(task="rerank", hard_negatives=0, in_batch_negatives=0)
    with pytest.raises(TrainConfigError, match="class_weighting"):
        FinetuneConfig(task="rerank", class_weighting="sqrt")
    with pytest.raises(TrainConfigError, match="task"):
        FinetuneConfig(task="ner")


# -- the output: served, and the same in transformers and CrossEncoder ----------------------------

QUERY = "alpha beta gamma"
DOCS = ["a fish in the sea", "the capital of a country", "a small dog that barks", "sea"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A reranker trained for a few steps through `bert-finetune --task rerank` (the CLI)."""
    tmp = tmp_path_factory.mktemp("rerank")
    _pretrained(tmp / "pretrained")
    train, valid = _toy(tmp)
    args = ["--task", "rerank", "--checkpoint", str(tmp / "pretrained"), "--train", str(train)]
    args += ["--valid", str(valid), "--output-dir", str(tmp / "run"), "--max-steps", "8"]
    args += ["--batch-size", "8", "--set", "progress_bar=false", "--set", "tensorboard=false"]
    args += ["--set", "hard_negatives=2", "--set", "mine_top_k=4", "--log-level", "WARNING"]
    assert finetune_main(args) == 0
    return tmp / "run" / "best"


def test_the_output_is_a_reranker_with_transformers_and_cross_encoder_scores(trained):
    transformers = pytest.importorskip("transformers")
    loaded = load_checkpoint(
        trained, BertForMaskedLM, tokenizer_factory=WordPieceTokenizer.from_pretrained
    )
    caps = loaded.capabilities
    # A listwise reranker's score is its logit: config.json says so, as CrossEncoder writes it.
    assert caps.rerank and caps.labels == ("LABEL_0",) and caps.score_activation == "identity"
    assert caps.cross_encoder
    config = json.loads((trained / "config.json").read_text())
    assert config["num_labels"] == 1
    assert config["architectures"] == ["RoFormerForSequenceClassification"]

    tok = loaded.tokenizer
    encs = [tok.encode(QUERY, d) for d in DOCS]
    T = max(len(e.ids) for e in encs)
    ids, mask, types = (
        torch.tensor([getattr(e, k) + [0] * (T - len(e.ids)) for e in encs])
        for k in ("ids", "attention_mask", "type_ids")
    )
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(trained).eval()
    with torch.no_grad():
        ours = loaded.model.classify(ids, mask, types).logits
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert float(ours.std()) > 0  # the token types and texts matter: not one constant score

    with TestClient(create_app(serve_config(trained, precision="fp32"))) as client:
        r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
        assert r.status_code == 200, r.text
        served = {x["index"]: x["score"] for x in r.json()}
        raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
        served_raw = {x["index"]: x["score"] for x in raw.json()}
    np.testing.assert_allclose([served[i] for i in range(len(DOCS))], ours[:, 0], atol=1e-5)
    np.testing.assert_allclose([served_raw[i] for i in range(len(DOCS))], ours[:, 0], atol=1e-5)

    st = pytest.importorskip("sentence_transformers")
    ce = st.CrossEncoder(str(trained), device="cpu")
    predicted = ce.predict([(QUERY, d) for d in DOCS])
    np.testing.assert_allclose(predicted, [served[i] for i in range(len(DOCS))], atol=1e-5)


def test_bert_eval_rerank_reports_the_three_systems(trained, tmp_path, capsys):
    gloss = tmp_path / "glosses.txt"
    gloss.write_text(
        "dog, domestic dog: a member of the genus Canis. The dog barked all night.\n"
        "bank: sloping land beside a body of water. They pulled the canoe up on the bank.\n"
        "run: move fast on foot. He ran to the station.\n"
    )
    pretrained = trained.parents[1] / "pretrained"
    args = ["--task", "rerank", "--checkpoint", str(trained), "--retriever", str(pretrained)]
    rc = eval_main([*args, "--corpus", str(gloss), "--top-k", "2"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["queries"] == 3 and out["candidates"] == 3 and out["top_k"] == 2
    for system in ("tfidf", "retriever", "reranked"):
        assert set(out[system]) == {"recall@1", "recall@10", "mrr"}
    # Beyond the reranked two, the retriever's order: recall@10 of 3 candidates is 1 for both.
    assert out["reranked"]["recall@10"] == out["retriever"]["recall@10"] == 1.0
    rc = eval_main(["--task", "rerank", "--checkpoint", str(trained), "--corpus", str(gloss)])
    assert rc == 2 and "--retriever" in capsys.readouterr().err
    # Not a reranker: refused with one message.
    not_reranker = ["--task", "rerank", "--checkpoint", str(pretrained), *args[4:]]
    rc = eval_main([*not_reranker, "--corpus", str(gloss)])
    assert rc == 2 and "not a reranker" in capsys.readouterr().err
