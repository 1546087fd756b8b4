"""Fine-tuning a pretrained encoder as a reranker (a cross-encoder) on query -> text pairs: the
`RerankTuner` behind `bert-finetune --task rerank`, on the fine-tuning loop (`tuner.Tuner`, on
`training.run.loop.RunLoop`).

    model  = the checkpoint's encoder + a fresh one-label classifier head (the relevance score)
    pairs  = query/text files or WordNet (example, definition) pairs, minus the holdout files'
             sentences; some candidates and their queries held out as the dev set
    mined  = per training query, the embedding model's (--miner, default the checkpoint) top
             mine_top_k candidates that are not its own: the hard negatives
    for each step (batch_size queries, one seeded permutation per epoch):
        per query: [positive, hard_negatives drawn from mined, in_batch_negatives other
                    queries' positives], each a "[CLS] query [SEP] text [SEP]" row -> one logit
        loss = listwise: softmax cross-entropy of each query's group, the positive the answer
               bce:      binary cross-entropy of every pair (positive 1, negatives 0)
             + distill_weight x cross-entropy between the embedding model's softmax over the
               group (its cosines / distill_temperature) and the reranker's
        every eval_every steps and at the end: the embedding model's top rerank_top_k dev
        candidates reranked; recall@1/@10, MRR; best/ = highest dev MRR

Why listwise by default: the reranker is only ever asked to order a query's candidates, and the
softmax over (positive, negatives) is the objective of exactly that, with every negative of a
group competing for the same probability mass (the hardest ones weigh most); BCE scores each pair
alone, so a group with one easy and one hard negative teaches mostly the easy one, and it spends
capacity on calibrating absolute scores that no ranking reads. BCE stays available (`loss: bce`)
for scores meant as probabilities.

What made a tiny cross-encoder learn in minutes (probes in checkpoints/reranker/README.md):
negatives from where the reranker will work, and distillation. At serving time it reorders the
embedding model's top 20 of ~1,300 candidates; of 29,000 training candidates the same share is
the top ~400, so `mine_top_k` is that, not the top 30 (near-duplicates and other senses of the
query's word, which a fresh head cannot tell apart: it stays at chance on them). The distillation
term gives every group a full ranking to learn from where the labels name one positive: the
cross-encoder first learns to order candidates roughly as the embedding model does, and the
labels take it past it.

An in-batch negative that is one of the query's own positives (two queries of one gloss in a
batch) is masked out of its loss; mined negatives never include the query's positives (any pair
with the same query text counts). Draws are seeded by (seed, step), so a resumed run sees the same
groups. Every dev evaluation centres the scores (`center_scores`: the dev pairs' mean logit
becomes 0; listwise loss only). The output is transformers' `...ForSequenceClassification` with
`num_labels: 1`, whose config.json names its scores' activation as sentence-transformers does
(`mark_scores`: the logit itself after a listwise loss, its sigmoid after BCE): the one loader
reads it as a reranker, `/rerank` serves it, and CrossEncoder opens it with the same scores.

Deliberately not here: graded relevance labels, distillation from a bigger cross-encoder (the
teacher here is the embedding model that mined the negatives),
denoising of false negatives (a mined definition may fit a query too; the rare true synonyms
among WordNet's definitions are trained on as negatives), and several processes (DDP).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.data.pairs import RetrievalSet
from training.data.rerank import (
    PairTokens,
    pair_batch,
    positives_by_query,
    read_rerank_pairs,
    split_dev,
)
from training.evaluation.rerank import embedding_scores, evaluate_reranking, nearest, unit_vectors
from training.evaluation.retrieval import CheckpointEmbedder, retrieval_metrics
from training.finetune.config import FinetuneConfig
from training.finetune.tuner import CONFIG_FILE, Tuner, classifier_from, start_device
from training.run.loop import StepWork
from training.run.metrics import plot_rerank_curves

__all__ = [
    "RERANK_LABEL",
    "RerankTuner",
    "center_scores",
    "distill_loss",
    "group_loss",
    "mark_scores",
    "mine_negatives",
]

logger = logging.getLogger(__name__)

RERANK_LABEL = "LABEL_0"  # transformers' name of an unnamed single label, as CrossEncoders carry
# What CrossEncoder.predict (and /rerank by default) applies to the logit, by loss: a listwise
# model's logit orders the candidates of one query and nothing more (each query's logits sit at
# their own offset, so a sigmoid would saturate for some queries and tie their scores), BCE's is
# a calibrated log-odds. Named as sentence-transformers 4 and 5 write it into config.json.
SCORE_ACTIVATIONS = {
    "listwise": "torch.nn.modules.linear.Identity",
    "bce": "torch.nn.modules.activation.Sigmoid",
}


def mark_scores(directory: Path, loss: str) -> None:
    """Name the activation of `loss`'s scores (`SCORE_ACTIVATIONS`) in directory/config.json, as
    sentence-transformers' CrossEncoder does: its predict and our /rerank then apply it."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["sentence_transformers"] = {"activation_fn": SCORE_ACTIVATIONS[loss]}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def distill_loss(
    logits: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over queries of the cross-entropy between the teacher's softmax over each group
    (teacher (B, G) cosines / temperature) and the model's, masked entries left out of both.

    Example: logits equal to teacher / temperature give the teacher's own entropy, the least.
    """
    neg_inf = float("-inf")
    target = (teacher.float() / temperature).masked_fill(~valid, neg_inf).softmax(dim=1)  # (B, G)
    log_p = logits.float().masked_fill(~valid, neg_inf).log_softmax(dim=1)  # (B, G)
    return -(target * log_p.masked_fill(~valid, 0.0)).sum(dim=1).mean()


def group_loss(logits: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss of (B, G) logits whose column 0 is each query's positive; `valid` (B, G) bool
    leaves masked negatives out. "listwise": mean over queries of -log softmax(logits)[0];
    "bce": mean binary cross-entropy over the valid pairs (label 1 for column 0, else 0).

    Example: logits [[2.0, 0.0]] -> listwise log(1 + e^-2) = 0.1269.
    """
    logits = logits.float()
    if kind == "listwise":
        masked = logits.masked_fill(~valid, float("-inf"))  # (B, G)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(masked, target)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, G)
    return losses[valid].mean()


def center_scores(model: torch.nn.Module, mean_logit: float) -> None:
    """Shift the one-label head's bias by -mean_logit, so that pairs whose mean logit it was
    average 0 after it.

    Why: the listwise and distillation losses see the logits through a softmax, blind to a
    shift, so nothing anchors them, and a run may end with every logit near -60, where
    /rerank's and CrossEncoder's sigmoid underflows float32 towards 0 and ranks by rounding.
    Centred on the dev pairs, scores stay spread around 0.5. No ranking changes, and neither
    does training (under those losses the bias gets no gradient).
    """
    with torch.no_grad():
        model.classifier.out.bias.sub_(mean_logit)


def mine_negatives(
    embedder: CheckpointEmbedder, rset: RetrievalSet, top_k: int
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(mined (Q, k) int64, query vectors (Q, H), candidate vectors (C, H)): per query, the
    embedding model's k best candidates that are none of its positives, best first (k cut to
    what the smallest row can give), and the unit vectors that scored them."""
    queries = unit_vectors(embedder, rset.queries)  # (Q, H)
    candidates = unit_vectors(embedder, rset.candidates)  # (C, H)
    exclude = [sorted(p) for p in positives_by_query(rset)]
    mined = nearest(queries, top_k, exclude, candidates=candidates).numpy().astype(np.int32)
    return mined, queries, candidates


class RerankTuner(Tuner, kind="rerank", config_file=CONFIG_FILE):
    """A cross-encoder: builds it, its pairs, negatives and dev set; the loop is `RunLoop`'s."""

    plot = staticmethod(plot_rerank_curves)

    def __init__(
        self,
        cfg: FinetuneConfig,
        *,
        checkpoint: str | Path,
        train_files: list[str | Path],
        output_dir: str | Path,
        holdout: list[str | Path] = (),
        valid_files: list[str | Path] = (),
        miner: str | Path | None = None,
    ) -> None:
        device = start_device(cfg)
        t0 = time.perf_counter()
        rset = read_rerank_pairs(train_files, [*holdout, *valid_files])
        if valid_files:  # a dev set of its own; the training pairs keep clear of it (above)
            train, dev = rset, read_rerank_pairs(valid_files)
        else:
            train, dev = split_dev(rset, cfg.dev_candidates, cfg.seed)
        model, tokenizer = classifier_from(Path(checkpoint), (RERANK_LABEL,), cfg.dropout)
        self.max_len = min(cfg.max_length, model.config.max_position_embeddings)
        self.miner = Path(miner or checkpoint)
        embedder = CheckpointEmbedder.load(self.miner, device=str(device))
        self.mined, self.query_vectors, self.candidate_vectors = mine_negatives(
            embedder, train, cfg.mine_top_k
        )  # (Q, k), (Q, H), (C, H)
        self.dev_first = embedding_scores(embedder, dev) if dev.queries else None  # (Qd, Cd)
        del embedder
        super().__init__(
            cfg,
            model=model,
            tokenizer=tokenizer,
            checkpoint=checkpoint,
            output_dir=output_dir,
            examples=len(train.queries),
            device=device,
        )
        self.train_set, self.dev_set = train, dev
        self.positives = positives_by_query(train)
        self.tokens = PairTokens.build(train, tokenizer)
        self.dev_tokens = PairTokens.build(dev, tokenizer) if dev.queries else None
        self.dev_top = None if self.dev_first is None else nearest(self.dev_first, cfg.rerank_top_k)
        self.first_stage = (
            None if self.dev_first is None else retrieval_metrics(self.dev_first, dev.targets)
        )
        self.setup_s = time.perf_counter() - t0

    # -- one step ---------------------------------------------------------------------------------
    def groups(self, step: int) -> tuple[list[tuple[int, int]], np.ndarray, int]:
        """(pairs, valid (B, G) bool, G) of step `step`: per query of the batch its positive,
        then its hard negatives, then its in-batch negatives, as (query, candidate) pairs."""
        rows = self.batch_rows(step)
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])  # a function of the step: exact resume
        pool = self.mined.shape[1]
        hard = cfg.hard_negatives
        picks = np.stack(
            [rng.choice(pool, size=hard, replace=hard > pool) for _ in rows]
        ) if hard else np.zeros((len(rows), 0), dtype=np.int64)  # fmt: skip
        in_batch = min(cfg.in_batch_negatives, len(rows) - 1)
        G = 1 + hard + in_batch
        pairs: list[tuple[int, int]] = []
        valid = np.ones((len(rows), G), dtype=bool)
        targets = [self.train_set.targets[r] for r in rows]
        for b, r in enumerate(rows):
            r = int(r)
            pairs.append((r, targets[b]))
            pairs += [(r, int(self.mined[r, j])) for j in picks[b]]
            for s in range(1, in_batch + 1):  # the next queries' positives, round the batch
                other = targets[(b + s) % len(rows)]
                pairs.append((r, other))
                valid[b, hard + s] = other not in self.positives[r]
        return pairs, valid, G

    def forward_backward(self, step_model: torch.nn.Module, *, want_accuracy: bool) -> StepWork:
        """The step's groups through the cross-encoder, `group_loss`; accuracy = the share of
        queries whose positive scores above all their negatives."""
        pairs, valid, G = self.groups(self.step)
        ids, mask, types = (t.to(self.device) for t in pair_batch(self.tokens, pairs, self.max_len))
        with self.autocast:
            logits = step_model.classify(ids, mask, types).logits.view(-1, G)  # (B, G)
        valid_t = torch.from_numpy(valid).to(self.device)
        loss = group_loss(logits, valid_t, self.cfg.loss)
        if self.cfg.distill_weight:
            q, c = (torch.tensor(x) for x in zip(*pairs, strict=True))
            teacher = (self.query_vectors[q] * self.candidate_vectors[c]).sum(-1).view(-1, G)
            loss = loss + self.cfg.distill_weight * distill_loss(
                logits, teacher.to(self.device), valid_t, self.cfg.distill_temperature
            )
        self.scaler.scale(loss).backward()
        self.session_examples += logits.shape[0]
        with torch.no_grad():
            others = logits.detach().float().masked_fill(~valid_t, float("-inf"))[:, 1:]
            accuracy = float((logits[:, 0].detach().float() > others.amax(dim=1)).float().mean())
        return StepWork(loss=loss.detach().float(), tokens=int(mask.sum()), accuracy=accuracy)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Dev recall@1/@10 and MRR of the embedding model's top rerank_top_k, reranked."""
        if self.dev_top is None:
            return {"step": self.step}
        with self.autocast:
            metrics = evaluate_reranking(
                self.model, self.dev_tokens, self.dev_set, self.dev_first, self.dev_top,
                max_length=self.max_len, batch_size=self.cfg.eval_batch_size, device=self.device,
            )  # fmt: skip
        if self.cfg.loss == "listwise":  # BCE's logits are calibrated: left as they are
            center_scores(self.model, metrics["mean_logit"])
            metrics["score_shift"] = -metrics["mean_logit"]
        metrics["first_stage_recall@1"] = self.first_stage["recall@1"]
        metrics["first_stage_mrr"] = self.first_stage["mrr"]
        metrics["step"] = self.step
        return metrics

    def selection_loss(self, valid: dict[str, Any]) -> float | None:
        """The best checkpoint has the highest dev MRR (recall@1 moves in steps of one query in
        ~1,000; MRR also counts the ranks below the first)."""
        return -valid["mrr"] if "mrr" in valid else -valid["step"]

    def describe(self, valid: dict[str, Any]) -> str:
        if "mrr" not in valid:
            return "no dev set"
        return (
            f"dev recall@1 {valid['recall@1']:.4f} (embeddings alone "
            f"{valid['first_stage_recall@1']:.4f}), recall@10 {valid['recall@10']:.4f}, "
            f"MRR {valid['mrr']:.4f} ({valid['mrr'] / max(valid['first_stage_mrr'], 1e-9):.2f}x)"
        )

    def data_record(self) -> dict[str, Any]:
        return {
            "task": "rerank",
            "miner": str(self.miner),
            "train_queries": len(self.train_set.queries),
            "train_candidates": len(self.train_set.candidates),
            "dev_queries": len(self.dev_set.queries),
            "dev_candidates": len(self.dev_set.candidates),
        }

    def describe_model(self, directory: Path) -> None:
        mark_scores(directory, self.cfg.loss)

    def log_start(self) -> None:
        logger.info(
            "reranker: %s params, %d queries / %d candidates (dev %d / %d), %d pairs per step, "
            "loss %s, precision %s, %d steps/epoch; set-up (reading, mining) %.1f s",
            self.params,
            len(self.train_set.queries),
            len(self.train_set.candidates),
            len(self.dev_set.queries),
            len(self.dev_set.candidates),
            self.cfg.batch_size * (1 + self.cfg.hard_negatives + self.cfg.in_batch_negatives),
            self.cfg.loss,
            self.precision,
            self.steps_per_epoch,
            self.setup_s,
        )
        if self.first_stage is not None:
            logger.info(
                "dev, embeddings alone: recall@1 %.4f, recall@10 %.4f, MRR %.4f",
                self.first_stage["recall@1"],
                self.first_stage["recall@10"],
                self.first_stage["mrr"],
            )
