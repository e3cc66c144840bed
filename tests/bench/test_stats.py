"""Properties of the bench statistics (pure functions, no processes)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import stats

value = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)
sample = st.lists(value, min_size=3, max_size=8)
paired = st.integers(3, 8).flatmap(lambda n: st.tuples(st.lists(value, min_size=n, max_size=n),
                                                      st.lists(value, min_size=n, max_size=n)))  # fmt: skip
factor = st.floats(min_value=0.01, max_value=100, allow_nan=False)
MIRROR = {"faster": "slower", "slower": "faster", "less": "more", "more": "less"}


def approx(x: float | None) -> object:
    return pytest.approx(x, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(sample, st.booleans())
def test_identical_samples_ratio_one_inside_ci_not_significant(a, higher):
    c = stats.compare(a, list(a), higher_is_better=higher)
    assert c.ratio == pytest.approx(1.0)
    assert c.ci_low <= c.ratio <= c.ci_high
    assert not c.significant
    assert c.verdict == "Not significant"


@settings(max_examples=60, deadline=None)
@given(sample, factor)
def test_ci_contains_the_ratio_when_b_is_a_scaled_copy(a, k):
    c = stats.compare(a, [x * k for x in a], higher_is_better=True)
    assert c.ratio == pytest.approx(k, rel=1e-9)
    assert c.ci_low == pytest.approx(k, rel=1e-9)
    assert c.ci_high == pytest.approx(k, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(paired, factor)
def test_scaling_one_side_scales_the_ratio_and_its_ci(ab, k):
    a, b = ab
    base = stats.compare(a, b, higher_is_better=True)
    scaled = stats.compare(a, [x * k for x in b], higher_is_better=True)
    assert scaled.ratio == approx(base.ratio * k)
    assert scaled.ci_low == approx(base.ci_low * k)
    assert scaled.ci_high == approx(base.ci_high * k)
    scaled_a = stats.compare([x * k for x in a], b, higher_is_better=True)
    assert scaled_a.ratio == approx(base.ratio / k)


@settings(max_examples=80, deadline=None)
@given(paired, st.booleans(), st.sampled_from([stats.SPEED, stats.AMOUNT]))
def test_verdicts_are_symmetric(ab, higher, words):
    a, b = ab
    ba = stats.compare(a, b, higher_is_better=higher, words=words)
    ab_ = stats.compare(b, a, higher_is_better=higher, words=words)
    assert ab_.ratio == approx(1 / ba.ratio)
    assert ab_.ci_low == approx(1 / ba.ci_high)
    assert ab_.ci_high == approx(1 / ba.ci_low)
    assert ab_.p_value == ba.p_value
    assert ab_.significant == ba.significant
    if ba.significant:
        number, word = ba.verdict.split()
        assert ab_.verdict == f"{number} {MIRROR[word]}"
    else:
        assert ab_.verdict == ba.verdict == "Not significant"


def test_verdict_wording():
    assert stats.verdict(math.log(1.31), True, higher_is_better=True) == "1.31x faster"
    assert stats.verdict(math.log(1.12), True, higher_is_better=False) == "1.12x slower"
    assert stats.verdict(math.log(1 / 1.5), True, higher_is_better=False, words=stats.COUNT) == "1.50x fewer"
    assert stats.verdict(math.log(2.0), False, higher_is_better=True) == "Not significant"


def test_clear_difference_is_significant_and_noise_is_not():
    a = [100.0, 103.0, 98.0, 101.0, 99.0]
    slow = [51.0, 50.0, 49.5, 50.5, 52.0]
    c = stats.compare(a, slow, higher_is_better=True)
    assert c.significant
    assert c.verdict.endswith("x slower")
    assert c.ci_high < 1 < 1 / c.ci_low
    noisy = [104.0, 96.0, 99.0, 103.0, 98.0]
    assert not stats.compare(a, noisy, higher_is_better=True).significant


def test_deterministic_figures():
    # Redis commands per task do not vary: a difference is certain, no difference is no difference.
    assert stats.p_value([17, 17, 17], [10, 10, 10]) == 0.0
    assert stats.p_value([17, 17, 17], [17, 17, 17]) == 1.0
    c = stats.compare([17, 17, 17], [10, 10, 10], higher_is_better=False, words=stats.COUNT)
    assert c.verdict == "1.70x fewer"


def test_zero_values_have_no_ratio_statistics():
    c = stats.compare([0, 0, 0], [0, 0, 0], higher_is_better=False, words=stats.COUNT)
    assert c.verdict == "Not significant"
    assert c.ci_low is None
    assert c.ratio == 1.0
    c = stats.compare([0, 0, 0], [0, 2, 3], higher_is_better=False, words=stats.COUNT)
    assert not c.significant
    assert c.ratio is None


def test_spread_warning():
    assert not stats.spread_warning([100, 101, 99])
    assert stats.spread_warning([100, 130, 70])
    c = stats.compare([100, 130, 70], [100, 101, 99], higher_is_better=True)
    assert any(w.startswith("A spread") for w in c.warnings)
    assert not any(w.startswith("B spread") for w in c.warnings)


def test_unpaired_comparison():
    c = stats.compare([100, 102, 98, 101], [80, 82, 79], higher_is_better=True, paired=False)
    assert c.significant
    assert c.verdict.endswith("x slower")
    with pytest.raises(ValueError, match="equal lengths"):
        stats.bootstrap_log_ratio_ci([1, 2, 3], [1, 2])


def test_few_repetitions_warn_that_the_bootstrap_ci_is_coarse():
    assert [stats.distinct_resamples(n) for n in (1, 2, 3, 5)] == [1, 3, 10, 126]
    rng = [100, 104, 97]
    # The paired bootstrap at n=3 draws exactly 10 different resamples: count them.
    idx = {tuple(sorted(row)) for row in itertools.product(range(3), repeat=3)}
    assert len(idx) == stats.distinct_resamples(3)
    few = stats.compare(rng, [x * 1.15 for x in rng], higher_is_better=True)
    assert any("n=3: 10 distinct bootstrap resamples" in w for w in few.warnings)
    five = stats.compare([*rng, 101, 99], [x * 1.15 for x in [*rng, 101, 99]], higher_is_better=True)
    assert not any("distinct bootstrap" in w for w in five.warnings)
