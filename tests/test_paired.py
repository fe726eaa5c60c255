"""benchmarks/paired.py: the paired comparison the benchmark verdicts quote, and how the checks use it."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import paired
from benchmarks.bench_calibration import _loss_check, _ordering_check


def _row(setting: str, value: float, units: list[list[float]] | None) -> dict:
    return {"setting": setting, "value": value, "units": units, "delta_points": 0.0}


def test_identical_rows_differ_by_nothing() -> None:
    u = paired.units(np.arange(50) % 3 == 0)
    p = paired.compare(u, u)
    assert p is not None
    assert (p.delta, p.low, p.high, p.better, p.worse, p.n) == (0.0, 0.0, 0.0, 0, 0, 50)
    assert not p.clear


def test_a_large_difference_is_separated_and_counted() -> None:
    a = paired.units(np.ones(200, dtype=bool))
    b = paired.units(np.arange(200) % 2 == 0)
    p = paired.compare(a, b)
    assert p is not None
    assert p.delta == pytest.approx(50.0)
    assert p.low > 35.0 and p.high < 65.0 and p.clear
    assert (p.better, p.worse) == (100, 0)


def test_one_flip_in_hundreds_is_not_separated() -> None:
    """A check decided by one sample of 540 (the calibrated demo CNN in bench_alloc) is within the noise."""
    base = np.arange(540) % 50 != 0
    worse = base.copy()
    worse[1] = False
    p = paired.compare(paired.units(worse), paired.units(base))
    assert p is not None
    assert p.delta == pytest.approx(-100 / 540)
    assert p.low < 0 <= p.high and not p.clear
    assert (p.better, p.worse) == (0, 1)


def test_ratio_units_give_the_ratio_of_sums() -> None:
    """Character accuracy: (characters right, characters) per line; the metric is a ratio of sums, not a mean."""
    a = paired.units([9, 1], [10, 1])  # 10/11
    b = paired.units([10, 0], [10, 1])  # 10/11 too, but better on the long line
    p = paired.compare(a, b)
    assert p is not None
    assert p.delta == pytest.approx(0.0)
    assert (p.better, p.worse) == (1, 1)


def test_rows_that_cannot_be_paired_give_none() -> None:
    u = paired.units([1, 0, 1])
    assert paired.compare(u, None) is None
    assert paired.compare(u, paired.units([1, 0])) is None
    assert paired.compare([], []) is None


def test_the_interval_is_the_same_on_every_run() -> None:
    rng = np.random.default_rng(3)
    a, b = paired.units(rng.random(300) < 0.6), paired.units(rng.random(300) < 0.5)
    assert paired.compare(a, b) == paired.compare(a, b)


def test_checks_quote_the_interval_and_keep_their_verdict() -> None:
    """The status stays the comparison of the measured values; the interval only says how much it means."""
    ones = paired.units(np.ones(100, dtype=bool))
    one_less = paired.units(np.arange(100) != 7)
    free, ind, seq = _row("data-free/3", 1.0, ones), _row("indep/3", 1.0, ones), _row("seq/3", 0.99, one_less)
    check = _ordering_check("t", 3, free, ind, seq)
    assert check["status"] == "FAIL"
    assert check["noise"] == "separated: none"
    assert "better on 0, worse on 1 of 100" in check["detail"]

    seq["delta_points"] = -1.0
    loss = _loss_check("t", 3, seq, 5.0, ref=_row("float", 1.0, ones))  # one flip in 100: a loss up to ~3
    assert loss["status"] == "PASS" and loss["noise"] == "bar outside the interval"
    assert "float - seq +1.00" in loss["detail"]
    assert _loss_check("t", 3, seq, 2.0, ref=_row("float", 1.0, ones))["noise"] == "bar inside the interval"


def test_checks_without_units_still_run() -> None:
    """Results written before units were recorded: no interval, the same verdicts."""
    rows = [_row(s, v, None) for s, v in (("data-free/3", 0.5), ("indep/3", 0.6), ("seq/3", 0.7))]
    check = _ordering_check("t", 3, *rows)
    assert check["status"] == "PASS" and check["noise"] == "-"


def test_results_files_keep_units_on_one_line_each() -> None:
    import json

    data = {"units": paired.units([1, 0, 0.5], [1, 1, 2]), "note": "a [1,\\n 2] string", "nested": [[1, 2], []]}
    text = paired.dumps(data)
    assert json.loads(text) == data
    assert '"num": [1, 0, 0.5]' in text and '"den": [1, 1, 2]' in text


def test_acceptance_quotes_the_interval_of_the_loss() -> None:
    from benchmarks.bench_models import ACCEPT_BITS, ACCEPT_GRANULARITY, ACCEPT_METHOD, Variant, acceptance

    label = Variant(ACCEPT_METHOD, ACCEPT_GRANULARITY, ACCEPT_BITS).label
    right = np.ones(400, dtype=bool)
    lost = right.copy()
    lost[:8] = False  # 2 points lost, decided by 8 of 400 files
    rows = [
        {"task": "magika", "variant": "float", "metric": "accuracy", "value": 1.0, "units": paired.units(right)},
        {"task": "magika", "variant": label, "metric": "accuracy", "value": 0.98, "units": paired.units(lost)},
    ]
    rows[1].update(delta_points=-2.0, file_ratio=7.0)
    (check,) = acceptance(rows, None)
    assert check["status"] == "FAIL" and check["loss_points"] == 2.0
    low, high = check["loss_interval"]
    assert 0.0 < low < 2.0 < high  # float minus quantized: clearly a loss, its size not pinned to the bar


def test_a_loss_of_exactly_the_bar_passes() -> None:
    """2 images of 400 is 0.5 points, which ``100 * (a - b)`` makes 0.5000000000000004: the direction classifier's
    4-bit calibrated row read FAIL against "within 0.5 points" for that rounding alone. One image more still fails."""
    seq = _row("seq/4", 0.9675, None)
    seq["delta_points"] = 100.0 * (0.9675 - 0.9725)
    assert -seq["delta_points"] > 0.5  # the rounding the check must see through
    assert _loss_check("t", 4, seq, 0.5)["status"] == "PASS"
    seq["delta_points"] = 100.0 * (0.965 - 0.9725)
    assert _loss_check("t", 4, seq, 0.5)["status"] == "FAIL"
    assert paired.loss_within(0.5000000000000004, 0.5) and not paired.loss_within(0.5 + 1e-6, 0.5)
