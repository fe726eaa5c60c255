"""Bits per layer from predicted error curves: under an average budget, a size ratio, or a per-layer SQNR target.

Each layer comes with its predicted relative error at every width (:mod:`.predict`), so choosing K is arithmetic on
those curves, with no clustering run. Under a budget, the allocation that minimises the summed relative error is
found greedily: each step buys the bit with the largest predicted error reduction per stored bit. Small sensitive
layers get more bits, large robust ones fewer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "HI_BITS",
    "LO_BITS",
    "Option",
    "allocate_bits",
    "allocate_options",
    "stored_bits",
]

LO_BITS = 2
HI_BITS = 8

Curve = Mapping[int, float]


def stored_bits(size: int, table: int, bits: float) -> float:
    """Bits one layer stores at ``bits``: its indices plus codebook tables (``table`` bits per level, all groups)."""
    return size * bits + table * 2.0**bits


Option = tuple[float, float]  # (stored bits, predicted error) of one way to encode a layer


def allocate_bits(
    sizes: Sequence[int],
    curves: Sequence[Curve],
    avg_bits: float,
    lo: int = LO_BITS,
    hi: int = HI_BITS,
    table_bits: Sequence[int] | None = None,
) -> list[int]:
    """Integer bits per layer minimising the summed predicted error within the size budget.

    The budget is what ``avg_bits`` everywhere would cost, index bits plus codebook tables (a per-channel codebook
    doubles with every bit), so the allocated file is never larger than the fixed-width one.
    """
    tables = list(table_bits or [0] * len(sizes))
    widths = range(lo, hi + 1)
    options = [[(stored_bits(s, t, b), c[b]) for b in widths] for s, t, c in zip(sizes, tables, curves, strict=True)]
    budget = sum(stored_bits(s, t, avg_bits) for s, t in zip(sizes, tables, strict=True))
    return [widths[j] for j in allocate_options(options, budget)]


def _hull(options: Sequence[Option]) -> list[int]:
    """Indices of the options on the lower convex hull of (cost, error), cheapest first: the only ones a budget
    allocation should stop at, each step buying less error per bit than the one before."""
    order = sorted(range(len(options)), key=lambda j: (options[j][0], options[j][1]))
    front: list[int] = []
    for j in order:
        if not front or options[j][1] < options[front[-1]][1]:
            front.append(j)
    hull: list[int] = []
    for j in front:
        while len(hull) >= 2:
            (c0, e0), (c1, e1), (c2, e2) = options[hull[-2]], options[hull[-1]], options[j]
            if (e0 - e1) * (c2 - c1) > (e1 - e2) * (c1 - c0):
                break
            hull.pop()
        hull.append(j)
    return hull


def allocate_options(options: Sequence[Sequence[Option]], budget: float) -> list[int]:
    """One option per layer (an index into its list) minimising the summed error within ``budget`` bits.

    Greedy on each layer's convex hull: every step buys the largest error reduction per stored bit, then an
    exchange pass moves steps between layers where that still lowers the sum. Layers whose cheapest option already
    exceeds what is left stay at it: the result may exceed an unreachable budget, never a reachable one.
    """
    hulls = [_hull(o) for o in options]
    pos = [0] * len(hulls)
    left = budget * (1 + 1e-9) - sum(o[h[0]][0] for o, h in zip(options, hulls, strict=True))

    def step(i: int, k: int) -> tuple[float, float]:
        """(extra bits, error saved) going from hull point k to k + 1 of layer i."""
        (c0, e0), (c1, e1) = options[i][hulls[i][k]], options[i][hulls[i][k + 1]]
        return c1 - c0, e0 - e1

    heap = [(-step(i, 0)[1] / step(i, 0)[0], i) for i in range(len(hulls)) if len(hulls[i]) > 1]
    heapq.heapify(heap)
    while heap and left > 0:
        _, i = heapq.heappop(heap)
        cost, _ = step(i, pos[i])
        if cost > left:
            continue  # this layer's next step does not fit; cheaper ones may still
        left -= cost
        pos[i] += 1
        if pos[i] + 1 < len(hulls[i]):
            cost, gain = step(i, pos[i])
            heapq.heappush(heap, (-gain / cost, i))
    pos = _exchange(pos, [len(h) for h in hulls], step, left)
    return [h[k] for h, k in zip(hulls, pos, strict=True)]


def _exchange(
    pos: list[int], lengths: Sequence[int], step: Callable[[int, int], tuple[float, float]], left: float
) -> list[int]:
    """Repair the greedy's one blind spot: cheap steps bought early can leave too little for a large layer's next
    step. Move one step from layer j to layer i whenever that fits the budget and lowers the summed error."""
    for _ in range(4 * len(pos)):
        best, move = 0.0, None
        for i in range(len(pos)):
            if pos[i] + 1 >= lengths[i]:
                continue
            up_cost, up_gain = step(i, pos[i])
            for j in range(len(pos)):
                if j == i or pos[j] == 0:
                    continue
                freed, lost = step(j, pos[j] - 1)
                gain = up_gain - lost
                if up_cost <= left + freed and gain > best * (1 + 1e-9) + 1e-15:
                    best, move = gain, (i, j, up_cost - freed)
        if move is None:
            return pos
        i, j, spent = move
        pos[i] += 1
        pos[j] -= 1
        left -= spent
    return pos
