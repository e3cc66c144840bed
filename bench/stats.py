"""Pure statistics for A/B benchmarks: medians, a paired bootstrap CI of the B/A ratio, a t-test, a verdict.

Everything works on the log scale: the B/A ratio of medians is ``exp(log med B - log med A)``, the bootstrap
draws log ratios and the t-test tests the mean paired log ratio. On that scale swapping A and B negates
every number exactly, so the verdict of B vs A is the mirror of A vs B ("1.31x faster" <-> "1.31x slower"),
and scaling one side by k shifts everything by log k, so the ratio and its CI scale by k.

The CI is a percentile bootstrap without interpolation (order statistics symmetric about the middle), again so
that mirroring is exact. Paired means rounds are resampled jointly: in round i, A and B ran back to back on
the same machine state, so a slow round slows both and cancels in the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
RESAMPLES = 4000
SPREAD_WARN = 0.10  # warn when a side's std dev exceeds 10 % of its mean
# Below this many distinct resamples a bootstrap CI is coarse: at n = 3 pairs there are only 10, and an
# endpoint can sit on the point ratio itself (seen: 1.152 [1.152-2.568]). n = 5 has 126.
MIN_DISTINCT_RESAMPLES = 100
SEED = 20240531

SPEED = ("faster", "slower")
AMOUNT = ("less", "more")
COUNT = ("fewer", "more")
LEVEL = ("higher", "lower")


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(np.median(np.asarray(values, dtype=float)))


def rel_stdev(values: Sequence[float]) -> float:
    """Sample standard deviation as a fraction of the mean (0 for fewer than two values or a zero mean)."""
    if len(values) < 2:
        return 0.0
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    return 0.0 if mean == 0 else float(arr.std(ddof=1)) / abs(mean)


def spread_warning(values: Sequence[float], limit: float = SPREAD_WARN) -> bool:
    return rel_stdev(values) > limit


def _positive(values: Sequence[float]) -> bool:
    return all(v > 0 and math.isfinite(v) for v in values)


def _log_medians(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log median(b) - log median(a), row by row."""
    return np.log(np.median(b, axis=-1)) - np.log(np.median(a, axis=-1))


def bootstrap_log_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool = True,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of log(median B / median A). Values must be positive."""
    av, bv = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    if paired:
        if len(av) != len(bv):
            raise ValueError("paired samples need equal lengths")
        idx = rng.integers(0, len(av), size=(resamples, len(av)))
        draws = _log_medians(av[idx], bv[idx])
    else:
        ia = rng.integers(0, len(av), size=(resamples, len(av)))
        ib = rng.integers(0, len(bv), size=(resamples, len(bv)))
        draws = _log_medians(av[ia], bv[ib])
    draws.sort()
    k = int((1 - confidence) / 2 * resamples + 1e-9)
    return float(draws[k]), float(draws[resamples - 1 - k])


def distinct_resamples(n: int, paired: bool = True, n_b: int | None = None) -> int:
    """How many different resamples a bootstrap of n values can draw: multisets of size n from n values,
    C(2n-1, n); unpaired, the product over both sides."""
    one = math.comb(2 * n - 1, n) if n > 0 else 0
    return one if paired else one * distinct_resamples(n_b if n_b is not None else n)


def _t_sf(t: float, df: float) -> float:
    """Student's t survival function. scipy.stats is imported here, not at the top: it costs about 1.5 s, and
    every `lab` command (a CLI that loads all its verbs) would pay it, `lab --help` included."""
    from scipy import stats as sps

    return float(sps.t.sf(t, df=df))


def p_value(a: Sequence[float], b: Sequence[float], *, paired: bool = True) -> float:
    """Two-sided t-test of the log values: paired (one-sample on log B - log A) or Welch's.

    A difference with no spread at all (deterministic figures such as Redis commands per task) is certain:
    p = 0 when it is non-zero, 1 when it is zero.
    """
    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    if paired:
        d = lb - la
        if np.all(d == d[0]):
            return 1.0 if d[0] == 0 else 0.0
        if len(d) < 2:
            return 1.0
        t = float(d.mean()) / (float(d.std(ddof=1)) / math.sqrt(len(d)))
        return 2 * _t_sf(abs(t), len(d) - 1)
    va, vb = (float(x.var(ddof=1)) if len(x) > 1 else 0.0 for x in (la, lb))
    diff = float(lb.mean() - la.mean())
    if va == 0 and vb == 0:
        return 1.0 if diff == 0 else 0.0
    se2a, se2b = va / len(la), vb / len(lb)
    t = diff / math.sqrt(se2a + se2b)
    df_den = (se2a**2 / (len(la) - 1) if len(la) > 1 else 0.0) + (se2b**2 / (len(lb) - 1) if len(lb) > 1 else 0.0)
    df = (se2a + se2b) ** 2 / df_den if df_den > 0 else 1.0
    return 2 * _t_sf(abs(t), df)


def verdict(log_ratio: float, significant: bool, *, higher_is_better: bool, words: tuple[str, str] = SPEED) -> str:
    """pyperf-style: "1.31x faster" / "1.12x slower" / "Not significant", from B's point of view."""
    if not significant:
        return "Not significant"
    better = log_ratio > 0 if higher_is_better else log_ratio < 0
    factor = math.exp(abs(log_ratio))
    return f"{factor:.2f}x {words[0] if better else words[1]}"


@dataclass(frozen=True)
class Comparison:
    n_a: int
    n_b: int
    a_median: float
    b_median: float
    a_min: float
    a_max: float
    b_min: float
    b_max: float
    a_rel_stdev: float
    b_rel_stdev: float
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float
    significant: bool
    verdict: str
    warnings: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def compare(
    a: Sequence[float],
    b: Sequence[float],
    *,
    higher_is_better: bool,
    words: tuple[str, str] = SPEED,
    paired: bool = True,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """Compare one figure's per-repetition values of B against A (index i of each = round i when paired).

    Significant means both: the t-test's p < alpha, and the bootstrap CI of the ratio excludes 1.
    """
    if not a or not b:
        raise ValueError("both sides need at least one value")
    a_med, b_med = median(a), median(b)
    warnings = [f"{side} spread {rel_stdev(v):.0%} > {SPREAD_WARN:.0%} of mean" for side, v in (("A", a), ("B", b))]
    warnings = [w for w, v in zip(warnings, (a, b), strict=True) if spread_warning(v)]
    base = {
        "n_a": len(a),
        "n_b": len(b),
        "a_median": a_med,
        "b_median": b_med,
        "a_min": float(min(a)),
        "a_max": float(max(a)),
        "b_min": float(min(b)),
        "b_max": float(max(b)),
        "a_rel_stdev": rel_stdev(a),
        "b_rel_stdev": rel_stdev(b),
    }
    if not (_positive(a) and _positive(b)):
        # Ratios of zeros (e.g. no failures on either side) mean nothing; equal medians are "no difference".
        same = a_med == b_med
        ratio = 1.0 if same else (b_med / a_med if a_med > 0 else None)
        return Comparison(
            **base,
            ratio=ratio,
            ci_low=None,
            ci_high=None,
            p_value=1.0,
            significant=False,
            verdict="Not significant" if same else "not comparable (zero values)",
            warnings=(*warnings, "zero values: no ratio statistics"),
        )
    distinct = distinct_resamples(len(a), paired, len(b))
    if distinct < MIN_DISTINCT_RESAMPLES:
        warnings.append(f"n={len(a)}: {distinct} distinct bootstrap resamples, a coarse CI (use --repeat 5+)")
    log_ratio = math.log(b_med) - math.log(a_med)
    lo, hi = bootstrap_log_ratio_ci(a, b, paired=paired, confidence=confidence, resamples=resamples, seed=seed)
    p = p_value(a, b, paired=paired)
    significant = p < alpha and (lo > 0 or hi < 0)
    return Comparison(
        **base,
        ratio=math.exp(log_ratio),
        ci_low=math.exp(lo),
        ci_high=math.exp(hi),
        p_value=p,
        significant=significant,
        verdict=verdict(log_ratio, significant, higher_is_better=higher_is_better, words=words),
        warnings=tuple(warnings),
    )
