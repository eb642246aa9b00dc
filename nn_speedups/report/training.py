"""The training tables: single-process training steps (seeds 000/001) and data-parallel scaling (distributed)."""

from __future__ import annotations

from collections import defaultdict

from nn_speedups.core import markdown
from nn_speedups.report.cells import _fmt, _pct, percentile_cell
from nn_speedups.report.records import _label, _memory


def training_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Seeds 000/001's training table: per model and activation, variant x batch with step time, images/s, the
    projected TinyImageNet epoch, speedup over vanilla, memory and the loss check."""
    train = [r for r in table_rows if "epoch_s_projected" in r]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in train:
        groups[(r.get("family"), r["model"], r.get("activation"), r["batch_size"])].append(r)
    tables = []
    for (family, model, activation, batch), picked in groups.items():
        header = ["variant", "step ms", "images/s", "epoch s (100k images)", "with data s", "speedup", "peak MB",
                  "saved activations MB", "compile s", "loss after 4 steps (drift)"]  # fmt: skip
        body = [
            [
                _label(r),
                _fmt(r["median_ms"]),
                _fmt(r["images_per_s"], 1),
                _fmt(r["epoch_s_projected"], 0),
                _fmt(r.get("epoch_s_projected_with_data"), 0),
                _fmt(r["speedup_vs_eager"]) + "x",
                _fmt(_memory(r), 0),
                _fmt(r.get("saved_activation_mb"), 0),
                _fmt(r.get("compile_s"), 1),
                f"{r['loss_last']:.4f} ({r['loss_drift']:.2%})",
            ]
            for r in picked
        ]
        act = f" with {activation}" if activation else ""
        title = f"{family}: {model}{act}, batch {batch}, image {picked[0].get('image_size')} ({picked[0]['device']})"
        table = markdown.table(header, body)
        data = next((r for r in picked if r.get("data_images_per_s")), None)
        if data:
            table += (
                f"\nData pipeline, timed apart from the step ({data['data_source']}, {data['data_workers']} loader "
                f"workers): {data['data_images_per_s']:.0f} images/s, {data['data_epoch_s_projected']:.0f} s per "
                "100k images; 'with data' adds it to the step's epoch (no workers) or takes the larger (workers).\n"
            )
        tables.append((title, table))
    return tables


def distributed_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Data-parallel rows (benches/test_distributed.py): per model and batch, variant x world size with the slowest
    rank's step time, total and per-rank images/s, scaling efficiency against world size 1 (ideal: 100%), the
    communication share of a profiled step and peak memory per rank."""
    dist = [r for r in table_rows if "world_size" in r]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in dist:
        groups[(r["model"], r["batch_size"])].append(r)
    tables = []
    order = {"reference": 0, "weak": 1, "strong": 2}
    for (model, batch), picked in groups.items():
        picked = sorted(picked, key=lambda r: (_label(r), r["world_size"], order.get(r.get("scaling"), 3)))
        header = ["variant", "ranks", "scaling", "batch per rank / global", "step ms (p50 / p90)", "images/s",
                  "per rank", "ideal images/s", "efficiency", "comm share", "peak MB per rank", "check"]  # fmt: skip
        body = [
            [
                _label(r),
                str(r["world_size"]),
                r.get("scaling") or "-",
                f"{r['per_rank_batch_size']} / {r['global_batch_size']}",
                f"{_fmt(r['median_ms'])} / {percentile_cell(r, 'p90_ms')}",
                _fmt(r["images_per_s"], 1),
                _fmt(r["images_per_s_per_rank"], 1),
                _fmt(r.get("ideal_images_per_s"), 1),
                _pct(r.get("scaling_efficiency")),
                _pct(r.get("comm_share")),
                _fmt(_memory(r), 0),
                r.get("check") or "-",
            ]
            for r in picked
        ]
        first = picked[0]
        title = (
            f"distributed: {model}, batch {batch}, image {first.get('image_size')} ({first['device']}, "
            f"{first.get('backend')}, {first.get('threads')} thread(s) per rank)"
        )
        note = (
            "\nweak: each rank keeps the batch (the global batch grows); strong: the ranks share it. Efficiency = "
            "images/s / (ranks x the same variant's images/s at 1 rank); ideal 100%. Step time: the slowest rank's, "
            "per step.\n"
        )
        tables.append((title, markdown.table(header, body) + note))
    return tables
