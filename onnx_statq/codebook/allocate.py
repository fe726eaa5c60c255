"""Bits per layer from predicted error curves: under an average budget, a size ratio, or a per-layer SQNR target.

Each layer comes with its predicted relative error at every width (:mod:`.predict`), so choosing K is arithmetic on
those curves, with no clustering run. Under a budget, the allocation that minimises the summed relative error is
found greedily: each step buys the bit with the largest predicted error reduction per stored bit. Small sensitive
layers get more bits, large robust ones fewer.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

__all__ = ["HI_BITS", "LO_BITS", "allocate_bits", "avg_bits_for_bytes", "bits_for_target", "stored_bits"]

LO_BITS = 2
HI_BITS = 8

Curve = Mapping[int, float]


def stored_bits(size: int, table: int, bits: float) -> float:
    """Bits one layer stores at ``bits``: its indices plus codebook tables (``table`` bits per level, all groups)."""
    return size * bits + table * 2.0**bits


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
    if not sizes:
        return []
    tables = list(table_bits or [0] * len(sizes))
    budget = sum(stored_bits(s, t, avg_bits) for s, t in zip(sizes, tables, strict=True))
    budget *= 1 + 1e-9  # a budget found by bisection must still buy its last exact bit
    bits = [lo] * len(sizes)
    budget -= sum(stored_bits(s, t, lo) for s, t in zip(sizes, tables, strict=True))
    if budget < 0:
        return bits

    def step(i: int) -> float:
        return stored_bits(sizes[i], tables[i], bits[i] + 1) - stored_bits(sizes[i], tables[i], bits[i])

    def entry(i: int) -> tuple[float, int]:
        gain = curves[i][bits[i]] - curves[i][bits[i] + 1]
        return -gain / step(i), i

    heap = [entry(i) for i in range(len(sizes))]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        cost = step(i)
        if cost > budget:
            continue  # this layer's next bit does not fit; cheaper ones may still
        budget -= cost
        bits[i] += 1
        if bits[i] < hi:
            heapq.heappush(heap, entry(i))
    return _exchange(bits, sizes, tables, curves, budget, lo, hi)


def _exchange(
    bits: list[int],
    sizes: Sequence[int],
    tables: Sequence[int],
    curves: Sequence[Curve],
    left: float,
    lo: int,
    hi: int,
) -> list[int]:
    """Repair the greedy's one blind spot: cheap bits bought early can leave too little for a large layer's next
    bit. Move one bit from layer j to layer i whenever that fits the budget and lowers the summed error."""

    def cost(i: int, b: int) -> float:
        return stored_bits(sizes[i], tables[i], b)

    for _ in range(4 * len(bits)):
        best, move = 0.0, None
        for i in range(len(bits)):
            if bits[i] >= hi:
                continue
            up_cost = cost(i, bits[i] + 1) - cost(i, bits[i])
            up_gain = curves[i][bits[i]] - curves[i][bits[i] + 1]
            for j in range(len(bits)):
                if j == i or bits[j] <= lo:
                    continue
                freed = cost(j, bits[j]) - cost(j, bits[j] - 1)
                gain = up_gain - (curves[j][bits[j] - 1] - curves[j][bits[j]])
                if up_cost <= left + freed and gain > best * (1 + 1e-9) + 1e-15:
                    best, move = gain, (i, j, up_cost - freed)
        if move is None:
            return bits
        i, j, spent = move
        bits[i] += 1
        bits[j] -= 1
        left -= spent
    return bits


def bits_for_target(
    curves: Sequence[Curve], target_rel_error: float, lo: int = LO_BITS, hi: int = HI_BITS
) -> list[int]:
    """Per layer, the fewest bits whose predicted error meets the target (``hi`` when none does)."""
    return [next((b for b in range(lo, hi + 1) if c[b] <= target_rel_error), hi) for c in curves]


def avg_bits_for_bytes(sizes: Sequence[int], table_bits: Sequence[int], target_bytes: float) -> float | None:
    """The average width whose stored bytes (indices and tables) equal ``target_bytes``; None if even ``LO_BITS``
    does not fit. Bisection: the stored size grows monotonically with the width."""

    def total(b: float) -> float:
        return sum(stored_bits(s, t, b) for s, t in zip(sizes, table_bits, strict=True)) / 8

    if total(LO_BITS) > target_bytes:
        return None
    lo, hi = float(LO_BITS), float(HI_BITS)
    if total(hi) <= target_bytes:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= target_bytes else (lo, mid)
    return lo
