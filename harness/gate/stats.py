"""The regression gate's statistics (harness.gate), on log times so that a shift is a ratio.

- `shift`: the Hodges-Lehmann estimate of the shift between two runs' rounds (the median of every head-minus-baseline
  difference of log times), its distribution-free (Moses) confidence interval, and one-sided Mann-Whitney U p-values
  (scipy.stats.mannwhitneyu, the test asv uses). `summary_shift` is the fallback for runs saved without per-round
  data: the log ratio of medians with a standard error from the saved IQRs and round counts (an approximation).
- Between-run noise: rounds inside one run share that run's machine state (frequency, memory placement, the other
  processes), so one run's rounds say nothing about how far the next run's median will land. `run_noise` estimates
  it from repeated unchanged (A/A) runs: the standard deviation of a case's log median across runs, raised to its
  80% upper confidence bound for the number of runs (few runs: a larger, safer figure).
- `threshold`: the smallest log shift that fails the gate, max(minimum effect, SIGMAS x the noise of the comparison
  made): one run against one run has sqrt(2) x the per-run noise; R fresh re-runs against the saved baseline
  sqrt(1 + 1/R) (the baseline is one noisy run too, and re-running the head cannot shrink its part); R re-runs of
  both sides sqrt(2/R).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = 1.959963984540054  # two-sided 95%
Z_POWER = 1.6448536269514722  # one-sided 95%: the power behind "smallest detectable"
NOISE_UCB = 0.80  # confidence of the upper bound on a case's between-run noise


@dataclass(frozen=True)
class Shift:
    """head vs baseline on the log scale: effect > 0 is slower."""

    effect: float  # log(head / baseline)
    low: float  # 95% confidence interval of the effect (rounds only)
    high: float
    p_slower: float  # one-sided p-values
    p_faster: float
    p_min: float  # the smallest p the rounds could give (too few rounds: never below alpha)
    rounds: tuple[int, int]
    medians_only: bool = False

    def decidable(self, alpha: float) -> bool:
        return self.p_min < alpha


def pct(log_ratio: float) -> float:
    """A log ratio as a fraction: 0.0953 -> +0.10 (10% slower)."""
    return math.expm1(log_ratio)


def shift(base_s: list[float], head_s: list[float]) -> Shift:
    """Hodges-Lehmann shift of log times, its Moses 95% interval and one-sided Mann-Whitney U p-values."""
    lb, lh = np.log(np.asarray(base_s, float)), np.log(np.asarray(head_s, float))
    n, m = len(lb), len(lh)
    diffs = np.sort(np.subtract.outer(lh, lb).ravel())
    total = n * m
    effect = float(np.median(diffs))
    # Moses: cut k differences from each end, k from the normal approximation of U's null distribution
    k = math.floor(total / 2 - Z95 * math.sqrt(total * (n + m + 1) / 12))
    k = min(max(k, 0), (total - 1) // 2)
    low, high = float(diffs[k]), float(diffs[total - 1 - k])
    if n < 2 or m < 2:
        p_slower = p_faster = 1.0
    else:
        p_slower = float(stats.mannwhitneyu(lh, lb, alternative="greater").pvalue)
        p_faster = float(stats.mannwhitneyu(lh, lb, alternative="less").pvalue)
    return Shift(effect, low, high, p_slower, p_faster, 1 / math.comb(n + m, n), (n, m))


def _median_se(median_s: float, iqr_s: float, rounds: int) -> float:
    """Standard error of a log median: sigma ~ IQR / 1.349 (normal), se(median) ~ 1.2533 sigma / sqrt(n)."""
    if median_s <= 0 or rounds < 1:
        return math.inf
    return 1.2533 * (iqr_s / 1.349) / median_s / math.sqrt(rounds)


def summary_shift(base: tuple[float, float, int], head: tuple[float, float, int]) -> Shift:
    """(median s, IQR s, rounds) of each side, for runs saved without round data: log ratio of medians."""
    effect = math.log(head[0] / base[0])
    se = math.hypot(_median_se(*base), _median_se(*head))
    if se == 0:
        p_slower, p_faster = float(effect <= 0), float(effect >= 0)
    else:
        p_slower, p_faster = float(stats.norm.sf(effect / se)), float(stats.norm.cdf(effect / se))
    return Shift(effect, effect - Z95 * se, effect + Z95 * se, p_slower, p_faster, 0.0, (base[2], head[2]), True)


def within_spread(times_s: list[float]) -> float:
    """Robust spread of one run's log round times (IQR / 1.349: the standard deviation for normal data)."""
    if len(times_s) < 4:
        return 0.0
    q1, q3 = np.percentile(np.log(times_s), [25, 75])
    return float((q3 - q1) / 1.349)


def run_noise(log_medians: list[float]) -> tuple[float, float]:
    """(standard deviation, its NOISE_UCB upper confidence bound) of one case's log medians over A/A runs."""
    k = len(log_medians)
    if k < 2:
        raise ValueError("between-run noise needs at least two runs")
    s = float(np.std(log_medians, ddof=1))
    return s, s * math.sqrt((k - 1) / stats.chi2.ppf(1 - NOISE_UCB, k - 1))


NOISE_FACTOR = {
    "single": lambda repeats: math.sqrt(2),  # one run against one run
    "confirm": lambda repeats: math.sqrt(1 + 1 / repeats),  # median of R re-runs against the saved baseline
    "confirm-baseline": lambda repeats: math.sqrt(2 / repeats),  # R re-runs against R re-runs of the baseline
}


def comparison_noise(noise: float, mode: str, repeats: int = 1) -> float:
    return noise * NOISE_FACTOR[mode](max(repeats, 1))


def threshold(min_effect: float, noise: float | None, sigmas: float, mode: str = "single", repeats: int = 1) -> float:
    """The log shift a slowdown must exceed: the minimum effect, or SIGMAS x the comparison's noise if larger."""
    floor = math.log1p(min_effect)
    if noise is None:
        return floor
    return max(floor, sigmas * comparison_noise(noise, mode, repeats))


def detectable(min_effect: float, noise: float, sigmas: float, mode: str = "single", repeats: int = 1) -> float:
    """The smallest slowdown (a fraction) caught 95% of the time: the threshold plus 1.645 x the comparison noise."""
    return pct(threshold(min_effect, noise, sigmas, mode, repeats) + Z_POWER * comparison_noise(noise, mode, repeats))


def widen(s: Shift, noise: float) -> tuple[float, float]:
    """The rounds' interval widened by a one-run-against-one-run between-run noise (added in quadrature)."""
    extra = Z95 * comparison_noise(noise, "single")
    return (s.effect - math.hypot(s.effect - s.low, extra), s.effect + math.hypot(s.high - s.effect, extra))
