"""Bits per layer under an average budget, from each layer's error at one reference bit width.

High-resolution theory: a codebook's squared error falls about 4x per extra bit (6 dB/bit). Knowing each layer's
relative error at the reference width therefore predicts it at every width, and the allocation that minimises the
summed relative error of all layers under a total-bits budget is found greedily: each step buys the bit with the
largest predicted error reduction per weight. Small sensitive layers get more bits, large robust ones fewer,
with no clustering runs beyond the reference fit.
"""

from __future__ import annotations

import heapq

__all__ = ["allocate_bits", "predicted_error"]

GAIN_PER_BIT = 4.0


def predicted_error(err_ref: float, ref_bits: int, bits: int) -> float:
    return err_ref * GAIN_PER_BIT ** (ref_bits - bits)


def allocate_bits(
    sizes: list[int],
    errors: list[float],
    ref_bits: int,
    avg_bits: float,
    lo: int = 2,
    hi: int = 8,
    table_bits: list[int] | None = None,
) -> list[int]:
    """Integer bits per layer minimising the summed predicted error within the size budget.

    The budget is what ``avg_bits`` everywhere would cost: index bits plus codebook tables, where ``table_bits[i]``
    is the bits one level of layer ``i`` costs across all its codebooks (groups x 16 or 32), since a per-channel
    codebook doubles with every bit. So the allocated file is never larger than the fixed-width one.
    """
    if not sizes:
        return []
    tables = table_bits or [0] * len(sizes)

    def cost(i: int, b: int) -> float:
        return sizes[i] * b + tables[i] * (1 << b)

    budget = sum(sizes[i] * avg_bits + tables[i] * 2.0**avg_bits for i in range(len(sizes)))
    budget -= sum(cost(i, lo) for i in range(len(sizes)))
    bits = [lo] * len(sizes)
    if budget < 0:
        return bits

    def entry(i: int) -> tuple[float, int]:
        step = cost(i, bits[i] + 1) - cost(i, bits[i])
        return -_gain(errors[i], ref_bits, bits[i]) / step, i

    heap = [entry(i) for i in range(len(sizes))]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        step = cost(i, bits[i] + 1) - cost(i, bits[i])
        if step > budget:
            continue  # this layer's next bit does not fit; cheaper ones may still
        budget -= step
        bits[i] += 1
        if bits[i] < hi:
            heapq.heappush(heap, entry(i))
    return bits


def _gain(err_ref: float, ref_bits: int, bits: int) -> float:
    return predicted_error(err_ref, ref_bits, bits) - predicted_error(err_ref, ref_bits, bits + 1)
