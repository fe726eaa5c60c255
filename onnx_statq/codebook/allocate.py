"""Bits per layer under an average budget, from each layer's error at one reference bit width.

High-resolution theory: a codebook's squared error falls about 4x per extra bit (6 dB/bit). Knowing each layer's
relative error at the reference width therefore predicts it at every width, and the allocation that minimises the
summed relative error of all layers under a total-bits budget is found greedily: each step buys the bit with the
largest predicted error reduction per weight. Small sensitive layers get more bits, large robust ones fewer,
with no clustering runs beyond the reference fit.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["allocate_bits", "predicted_error"]

GAIN_PER_BIT = 4.0


def predicted_error(err_ref: float, ref_bits: int, bits: int) -> float:
    return err_ref * GAIN_PER_BIT ** (ref_bits - bits)


def allocate_bits(
    sizes: list[int], errors: list[float], ref_bits: int, avg_bits: float, lo: int = 2, hi: int = 8
) -> list[int]:
    """Integer bits per layer with ``sum(size * bits) <= avg_bits * sum(size)``, minimising summed predicted error."""
    if not sizes:
        return []
    total = float(np.sum(sizes))
    budget = avg_bits * total - lo * total
    bits = [lo] * len(sizes)
    if budget < 0:
        return bits
    heap = [(-_gain(e, ref_bits, lo) / n, i) for i, (n, e) in enumerate(zip(sizes, errors, strict=True))]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        if sizes[i] > budget:
            continue  # this layer's next bit does not fit; smaller layers may still
        budget -= sizes[i]
        bits[i] += 1
        if bits[i] < hi:
            heapq.heappush(heap, (-_gain(errors[i], ref_bits, bits[i]) / sizes[i], i))
    return bits


def _gain(err_ref: float, ref_bits: int, bits: int) -> float:
    return predicted_error(err_ref, ref_bits, bits) - predicted_error(err_ref, ref_bits, bits + 1)
