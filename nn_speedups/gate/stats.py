"""The regression gate's statistics (nn_speedups.gate), on log times so that a shift is a ratio.

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


# ------------------------------------------------------------------------------------------------ pairs (--confirm)
#
# The unit of a fresh-process confirmation is the pair: one fresh head process against one fresh baseline process
# run beside it. Each pair gives one log ratio of the two processes' medians; the rounds inside a process share its
# state and only give that process's median and spread.

# Pocock's constants (two-sided 5% over K equally spaced looks at a normal statistic; Jennison and Turnbull, Group
# Sequential Methods, table 2.1): checking a 95% interval after every pair would, over K looks, stray past a true
# shift far more often than 2.5% a side; checking the interval at the nominal level of POCOCK[K - 1] keeps it there.
POCOCK = (Z95, 2.178, 2.289, 2.361, 2.413, 2.453, 2.485, 2.512, 2.535, 2.555)


def sequential_level(looks: int) -> float:
    """The two-sided level of an interval checked at each of `looks` looks so that all of them together err about 5%
    of the time (2.5% a side): Pocock up to 10 looks, Bonferroni beyond (more cautious)."""
    looks = max(int(looks), 1)
    one_sided = float(stats.norm.sf(POCOCK[looks - 1])) if looks <= len(POCOCK) else 0.025 / looks
    return 1 - 2 * one_sided


EXACT_FLIPS = 16  # up to this many pairs the sign-flip test enumerates all 2^n signs; beyond, 2^16 seeded draws


@dataclass(frozen=True)
class PairShift:
    """head vs baseline over n pairs of processes, on the log scale: effect > 0 is slower."""

    effect: float  # Hodges-Lehmann estimate: the median of the Walsh averages of the pairs' log ratios
    low: float  # 95% interval (honest for few pairs: Student t with n - 1 degrees of freedom, see pair_shift)
    high: float
    p_slower: float  # one-sided p-values of a test valid for n pairs
    p_faster: float
    p_min: float  # the smallest one-sided p that n pairs can give (3 pairs: 1/8)
    pairs: int
    interval: str  # how the interval was made
    test: str  # which test gave p


def walsh(d: list[float]) -> np.ndarray:
    """Every pairwise average (d_i + d_j) / 2, i <= j, sorted."""
    a = np.asarray(d, float)
    i, j = np.triu_indices(len(a))
    return np.sort((a[i] + a[j]) / 2)


def signed_rank_cut(n: int, level: float = 0.95) -> int:
    """How many Walsh averages to cut from each end for an exact `level` signed-rank interval over n pairs: the
    largest c with P(W+ <= c - 1) <= (1 - level) / 2 under the null; 0 when n is too small (fewer than 6 pairs)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):  # multiply the generating function by (1 + x^r)
        counts[r:] = counts[r:] + counts[:-r].copy()
    cdf = np.cumsum(counts) / 2.0**n
    return int(np.sum(cdf <= (1 - level) / 2 + 1e-12))


def sign_flip(d: list[float]) -> tuple[float, float, float]:
    """(p slower, p faster, smallest possible p): the exact one-sided sign-flip permutation test of the sum of the
    log ratios (valid for any number of pairs: under no change each pair's sign is a coin flip)."""
    a = np.asarray(d, float)
    n = len(a)
    if n == 0:
        return 1.0, 1.0, 1.0
    if n <= EXACT_FLIPS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        total, smallest = 2**n, 2.0**-n
    else:
        bits = np.random.default_rng(0).integers(0, 2, size=(2**16, n))
        total, smallest = 2**16 + 1, 1 / (2**16 + 1)
    flipped = ((1 - 2 * bits) * np.abs(a)).sum(axis=1)
    observed, eps = a.sum(), 1e-12 * max(1.0, float(np.abs(a).sum()))
    extra = 0 if n <= EXACT_FLIPS else 1  # Monte Carlo: count the observed assignment itself
    p_slower = (np.sum(flipped >= observed - eps) + extra) / total
    p_faster = (np.sum(flipped <= observed + eps) + extra) / total
    return float(min(p_slower, 1.0)), float(min(p_faster, 1.0)), smallest


def pair_shift(d: list[float], floor_sd: float = 0.0, shared_sd: float | None = None, level: float = 0.95) -> PairShift:
    """The shift over n pairs' log ratios `d`.

    The interval is the Student t `level` (95%) interval of their mean, with the pairs' standard deviation never below
    `floor_sd` (the processes' own round noise: identical ratios from three pairs are luck, not precision), and, from
    as many pairs on as that `level` allows (6 for 95%), never narrower than the exact Wilcoxon signed-rank interval
    of the Walsh averages. For few pairs it is
    wide, as it must be: t with 2 degrees of freedom is 4.3 standard errors. The test is the exact sign-flip test.

    `shared_sd` (not None) means every ratio shares one measurement of the baseline (plain --confirm: each head
    re-run against the saved baseline's median); that run's own between-run noise does not average out over the
    re-runs, so the standard error keeps it, at least the re-runs' own sd: sqrt(s^2 / n + max(shared_sd, s)^2), and
    the test is the t test on that standard error (a sign flip would assume independent pairs).
    """
    n = len(d)
    a = np.asarray(d, float)
    effect = float(np.median(walsh(d))) if n else 0.0
    if n < 2:
        p = 1.0 if n == 0 else 0.5
        return PairShift(effect, -math.inf, math.inf, p, p, p, n, "one pair: no interval", "none")
    mean = float(a.mean())
    s = max(float(a.std(ddof=1)), floor_sd)
    q = float(stats.t.ppf(1 - (1 - level) / 2, n - 1))
    if shared_sd is None:
        se = s / math.sqrt(n)
        low, high = mean - q * se, mean + q * se
        how = f"Student t over {n} pairs"
        c = signed_rank_cut(n, level)
        if c:
            w = walsh(d)
            low, high = min(low, float(w[c - 1])), max(high, float(w[len(w) - c]))
            how += " and the exact signed-rank interval"
        p_slower, p_faster, p_min = sign_flip(d)
        test = f"exact sign-flip over {n} pairs"
    else:
        se = math.sqrt(s**2 / n + max(shared_sd, s) ** 2)
        low, high = mean - q * se, mean + q * se
        how = f"Student t over {n} re-runs, keeping the saved baseline's own noise"
        t = mean / se if se > 0 else math.copysign(math.inf, mean)
        p_slower, p_faster, p_min = float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1)), 0.0
        test = f"t test over {n} re-runs against one saved baseline"
    return PairShift(effect, min(low, effect), max(high, effect), p_slower, p_faster, p_min, n, how, test)
