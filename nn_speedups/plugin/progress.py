"""Progress of a bench run per family, with an estimate of what is left.

The estimate for a case still to run is, in order: its own duration in an earlier run (kept in pytest's cache),
the mean of this run's finished cases of the same family, the family's typical seconds per case (PRIOR_S_PER_CASE,
scaled by how this machine compares on the families finished so far), the mean of all finished cases. Cases skipped
at collection (profile, model or GPU reasons) count as taking no time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


def family_of(module_name: str) -> str:
    """nn_speedups.benches.test_inference -> inference."""
    return module_name.rsplit(".", 1)[-1].removeprefix("test_")


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# Seconds per running case of each family in the quick profile on a CPU: a fresh clone's `make bench` on the 2-core
# development VM at a7d65a5. Only a first estimate: cases of one family differ, machines differ.
PRIOR_S_PER_CASE = {
    ("quick", "cpu"): {
        "compression": 23.5,
        "distributed": 10.7,
        "fastswish": 2.3,
        "inference": 3.9,
        "onnxruntime": 5.5,
        "training": 10.0,
    }
}


@dataclass
class RunProgress:
    cases: dict[str, tuple[str, bool]]  # node id -> (family, runs: not skipped at collection)
    previous: dict[str, float] = field(default_factory=dict)  # node id -> seconds in an earlier run
    done: dict[str, float] = field(default_factory=dict)  # node id -> seconds in this run
    started: float = field(default_factory=time.perf_counter)
    announced: set[str] = field(default_factory=set)
    prior: dict[str, float] = field(default_factory=dict)  # family -> typical seconds per case (PRIOR_S_PER_CASE)

    def families(self) -> list[str]:
        return list(dict.fromkeys(family for family, _ in self.cases.values()))

    def finished(self, nodeid: str, seconds: float) -> None:
        self.done[nodeid] = self.done.get(nodeid, 0.0) + seconds

    def _estimate(self, nodeid: str) -> float | None:
        if nodeid in self.previous:
            return self.previous[nodeid]
        family = self.cases[nodeid][0]
        ran = {n: s for n, s in self.done.items() if self.cases.get(n, ("", False))[1]}  # not skipped at collection
        same = [s for n, s in ran.items() if self.cases[n][0] == family]
        if same:
            return statistics.fmean(same)
        if family in self.prior:
            known = [n for n in ran if self.cases[n][0] in self.prior]
            expected = sum(self.prior[self.cases[n][0]] for n in known)
            scale = sum(ran[n] for n in known) / expected if expected else 1.0  # this machine against the prior's
            return self.prior[family] * scale
        return statistics.fmean(ran.values()) if ran else None

    def left_s(self) -> float | None:
        """Seconds the cases not yet finished should take, or None when nothing is known yet."""
        pending = [n for n, (_, runs) in self.cases.items() if runs and n not in self.done]
        estimates = [self._estimate(n) for n in pending]
        if any(e is None for e in estimates):
            return None
        return sum(estimates)

    def starting(self, nodeid: str) -> str | None:
        """The line to print when `nodeid` starts and is the first case of its family; else None."""
        if nodeid not in self.cases:
            return None
        family = self.cases[nodeid][0]
        if family in self.announced:
            return None
        self.announced.add(family)
        mine = [runs for fam, runs in self.cases.values() if fam == family]
        order = self.families()
        left = self.left_s()
        estimate = f"about {duration_text(left)} left" if left is not None else "estimate after the first cases"
        return (
            f"[family {order.index(family) + 1}/{len(order)}] {family}: {sum(mine)} cases to run, "
            f"{len(mine) - sum(mine)} skipped | {duration_text(time.perf_counter() - self.started)} so far, {estimate}"
        )
