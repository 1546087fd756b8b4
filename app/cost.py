"""What a forward pass costs, in token-equivalents: one price list for the batcher's admission
and the engine's split of a batch into forward passes.

* ``CostModel``: a pass's fixed overhead, its size-dependent work (real or padded tokens, plus
  attention over padding), and ``CostModel.for_unpadded(hidden, intermediate)``, the prices of
  our model, which drops padding before its token-wise work.
* ``plan_chunks``: the split of a batch sorted by length into passes of least total cost.

Both ``app.batcher`` (which admits requests while a batch's work fits ``max_batch_tokens``) and
``app.engine`` (which runs the passes) import this module; neither imports the other.
Deliberately not here: queues, tensors, timing measurements.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

# The fixed cost of one forward pass, in token-equivalents. Measured on a BERT-mini on CPU: a
# pass costs ~50 tokens' worth of work before its first token (Python dispatch, and streaming
# every weight matrix from memory, which small batches cannot amortise).
FORWARD_OVERHEAD_TOKENS = 64


@dataclass(frozen=True)
class CostModel:
    """What a forward pass costs, in token-equivalents (one token's linear work is 1).

    One price list for two decisions: the batcher admits requests while a batch's ``work`` stays
    within ``max_batch_tokens``, and ``plan_chunks`` splits a batch into passes of least total
    ``pass_cost``. The engine gives the numbers of the model it runs (``Engine.cost_model``);
    the default prices a model that computes every padded position.

    * ``padded``: padding costs like real tokens (True) or nothing (a model that drops padding
      before its token-wise work, as ours does; then only attention pays for it).
    * ``attention``: the cost of one query-key pair of the padded (n, T, T) score matrices.
    * ``overhead``: the fixed cost of one pass (Python dispatch, kernel launches, streaming every
      weight matrix from memory), which small passes cannot amortise.
    """

    overhead: float = 64.0
    attention: float = 0.0
    padded: bool = True

    def work(self, n: int, max_len: int, real_tokens: int) -> float:
        """The size-dependent cost of one pass over ``n`` inputs padded to ``max_len``."""
        tokens = n * max_len if self.padded else real_tokens
        return tokens + self.attention * n * max_len * max_len

    def pass_cost(self, n: int, max_len: int, real_tokens: int) -> float:
        return self.overhead + self.work(n, max_len, real_tokens)

    @classmethod
    def for_unpadded(cls, hidden: int, intermediate: int) -> CostModel:
        """The prices of a BERT that drops padding before all token-wise work (ours).

        Padding then costs only in attention: n * T^2 query-key pairs, each worth
        2H / (4H^2 + 2HI) of a token's linear work. Splitting a batch thus pays only for long
        outliers.
        """
        return cls(
            overhead=FORWARD_OVERHEAD_TOKENS,
            attention=2 * hidden / (4 * hidden * hidden + 2 * hidden * intermediate),
            padded=False,
        )


def plan_chunks(
    sorted_lengths: Sequence[int], cost: CostModel = CostModel()
) -> list[tuple[int, int]]:
    """Split lengths sorted ascending into [start, end) chunks of minimal total ``pass_cost``.

    A chunk is padded to its last (longest) length. Exact dynamic programming, O(n^2) for a
    batch's few dozen inputs.

    >>> plan_chunks([5, 5, 6, 100])  # one long outlier gets its own pass
    [(0, 3), (3, 4)]
    >>> plan_chunks([5, 6, 7])  # 3 x 7 = 21 beats any split plus 64 of overhead
    [(0, 3)]
    """
    n = len(sorted_lengths)
    if n == 0:
        return []
    if any(a > b for a, b in itertools.pairwise(sorted_lengths)):
        raise ValueError(f"lengths must be sorted ascending, got {list(sorted_lengths)}")
    prefix = [0, *itertools.accumulate(sorted_lengths)]  # real tokens of the first i inputs
    best: list[float] = [0.0] + [float("inf")] * n  # best[i]: minimal cost of the first i
    cut: list[int] = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        for start in range(end):
            real = prefix[end] - prefix[start]
            total = best[start] + cost.pass_cost(end - start, longest, real)
            if total < best[end]:
                best[end], cut[end] = total, start
    chunks = []
    end = n
    while end > 0:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]
