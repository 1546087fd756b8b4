"""The serving gate's probe set (training.evaluation.probe_set -> app/probes.json): the committed file is
what the generator writes, and the generator masks whole words as its docstring says."""

from __future__ import annotations

import json

from training.evaluation import probe_set


def test_the_committed_probe_set_is_what_the_generator_writes():
    assert probe_set.OUT.read_text(encoding="utf-8") == probe_set.render(probe_set.build()), (
        "app/probes.json is stale: run `python -m training.evaluation.probe_set`"
    )
    probes = json.loads(probe_set.OUT.read_text(encoding="utf-8"))
    assert probes["format"] == probe_set.FORMAT and "WordNet" in probes["licence"]
    for item in probes["fill_mask"]:
        assert "[MASK]" in item["masked"] and "[MASK]" not in item["text"]
        assert len(item["masked"].split()) == len(item["text"].split())
    valid = (probe_set.DATA / "wordnet.valid.txt").read_text(encoding="utf-8")
    train = (probe_set.DATA / "wordnet.train.txt").read_text(encoding="utf-8")
    assert all(pair["query"] in valid and pair["document"] in valid for pair in probes["retrieval"])
    assert all(text in train for text in probes["calibration"])


def test_masks_fall_on_whole_words_every_few_words(monkeypatch):
    monkeypatch.setattr(probe_set, "MASK_EVERY", 2)
    assert probe_set._mask_from("a b c. d e", 4, 5) == "[MASK] b [MASK]. d [MASK]"
    # Words that are not letters alone are skipped, never cut.
    assert probe_set._mask_from("x e.g. y z", 0, 1) == "[MASK] e.g. [MASK] z"
