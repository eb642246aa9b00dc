"""The thresholds file: `calibrate` writes it from repeated unchanged runs (--calibrate), `Thresholds` reads it back.

It holds per case (and pooled per device/family) between-run noise, the threshold and smallest detectable slowdown
that noise gives, and the spread memory and accuracy showed in the A/A runs.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from nn_speedups.gate import stats as gs
from nn_speedups.gate.runs import CaseRun, GateError, Run, identity
from nn_speedups.gate.verdicts import ACCURACY_KEYS, MEMORY_FLOOR_MB, Options, _device, _num, min_effect


class Thresholds:
    """A thresholds file written by --calibrate: per case (and pooled per device/family) between-run noise, and the
    spread memory and accuracy showed in the A/A runs."""

    KIND = "nn-speedups gate thresholds"

    def __init__(self, data: dict, path: str = "") -> None:
        self.data, self.path = data, path
        self.cases: dict = data.get("cases") or {}
        self.families: dict = data.get("families") or {}

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise GateError(
                f"--thresholds {path}: no such file; write one with python -m nn_speedups.gate --calibrate RUN1.json "
                "RUN2.json RUN3.json ... --out PATH"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GateError(f"--thresholds {path}: not a JSON thresholds file ({error})") from None
        if not isinstance(data, dict) or data.get("kind") != cls.KIND or not isinstance(data.get("cases"), dict):
            raise GateError(
                f"--thresholds {path}: not a thresholds file written by python -m nn_speedups.gate --calibrate"
            )
        return cls(data, str(path))

    def noise(self, case: CaseRun, device: str) -> tuple[float | None, str]:
        entry = self.cases.get(case.name)
        if entry and isinstance(entry.get("noise"), (int, float)):
            return float(entry["noise"]), f"calibrated on {self.data.get('run_count', '?')} runs"
        pooled = self.families.get(f"{device}/{case.family}")
        if pooled and isinstance(pooled.get("noise"), (int, float)):
            return float(pooled["noise"]), f"{device}/{case.family} calibrated noise (case not calibrated)"
        return None, "uncalibrated"

    def spread(self, case: CaseRun, key: str) -> float:
        value = ((self.cases.get(case.name) or {}).get("spread") or {}).get(key)
        return float(value) if _num(value) else 0.0


# ------------------------------------------------------------------------------------------------ --calibrate

MEMORY_KEYS = tuple(MEMORY_FLOOR_MB) + ("model_size_mb",)


def calibrate(runs: list[Run], options: Options) -> dict:
    """Per case between-run noise from repeated unchanged runs, the smallest slowdown each can detect, and the
    spread of memory and accuracy fields; the thresholds file --thresholds reads."""
    names = [n for n in dict.fromkeys(n for r in runs for n in r.cases) if sum(n in r.cases for r in runs) >= 2]
    raw: dict[str, tuple] = {}
    for name in names:
        cases = [r.cases[name] for r in runs if name in r.cases]
        raw[name] = (cases, *gs.run_noise([math.log(c.median_s) for c in cases]))
    pooled: dict[str, list[float]] = {}
    for cases, s, _ in raw.values():
        pooled.setdefault(f"{_device(cases[0], runs[0])}/{cases[0].family}", []).append(s)
    families = {k: {"noise": statistics.median(v), "cases": len(v)} for k, v in pooled.items()}
    out_cases = {}
    for name, (cases, s, ucb) in raw.items():
        device, family = _device(cases[0], runs[0]), cases[0].family
        # a case's own few runs can look luckily quiet: never below half its family's typical noise
        noise = max(ucb, 0.5 * families[f"{device}/{family}"]["noise"])
        floor = min_effect(device, family, options.min_effect)
        spread = {}
        for key in MEMORY_KEYS:
            values = [c.info[key] for c in cases if _num(c.info.get(key)) and c.info[key] > 0]
            if len(values) >= 2:
                spread[key] = max(values) / min(values) - 1
        for key in ACCURACY_KEYS:
            values = [c.info[key] for c in cases if _num(c.info.get(key))]
            if len(values) >= 2:
                spread[key] = max(values) - min(values)
        within = [gs.within_spread(c.times) for c in cases if c.times]
        out_cases[name] = {
            "family": family,
            "device": device,
            "runs": len(cases),
            "median_ms": statistics.median(c.median_ms for c in cases),
            "rounds": int(statistics.median(c.rounds for c in cases)),
            "within_run_spread": statistics.median(within) if within else None,
            "between_run_sd": s,
            "noise": noise,
            "threshold": gs.pct(gs.threshold(floor, noise, options.sigmas)),
            "confirm_threshold": gs.pct(gs.threshold(floor, noise, options.sigmas, "confirm", options.repeats)),
            "detectable": gs.detectable(floor, noise, options.sigmas),
            "detectable_confirm": gs.detectable(floor, noise, options.sigmas, "confirm", options.repeats),
            "spread": spread,
        }
    return {
        "kind": Thresholds.KIND,
        "version": 1,
        "runs": [r.path for r in runs],
        "run_count": len(runs),
        "machine": identity(runs[0].machine_info),
        "sigmas": options.sigmas,
        "confirm_runs": options.repeats,
        "noise_ucb": gs.NOISE_UCB,
        "families": families,
        "cases": out_cases,
    }
