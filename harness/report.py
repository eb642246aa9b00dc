"""Reports in the seeds' form from a run: per-model tables (markdown and terminal), a CSV of every row, PNG plots,
and a side-by-side comparison of two runs.

    python -m harness.report RUN.json [BASELINE.json] [--out reports/NAME]

RUN.json is a file pytest-benchmark saved (`--benchmark-autosave` writes .benchmarks/<machine>/NNNN_*.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path


def load_run(path: str | Path) -> dict:
    with open(path) as f:
        run = json.load(f)
    if "benchmarks" not in run:
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return run


def rows(run: dict) -> list[dict]:
    """One flat row per benchmark: the extra_info fields plus the test name and group."""
    out = []
    for bench in run["benchmarks"]:
        info = bench.get("extra_info") or {}
        if "median_ms" not in info:
            continue
        out.append({"name": bench.get("name"), "group": bench.get("group"), **info})
    return out


_CASE_ID = re.compile(r"^(?P<head>.+?)-bs(?P<batch>\d+)-(?P<variant>.+)$")
_OWN_MODULES = ("harness.", "optimizations.", "models.", "kernels.")  # the suite's errors: messages for the reader
_BARE_TYPES = ("AssertionError", "Failed")  # an assert's message, pytest.fail's (the suite's one-line failures)


def _outcomes(run: dict) -> dict:
    """{"failed": {node id: one line}, "skipped": {node id: reason}}: what the plugin saved beside the benchmarks."""
    saved = run.get("nn_speedups") or {}
    return {"failed": dict(saved.get("failed") or {}), "skipped": dict(saved.get("skipped") or {})}


def _activations() -> set[str]:
    try:
        from models.activations import ACTIVATIONS
    except Exception:  # noqa: BLE001 - the report reads saved runs without needing the models to import
        return set()
    return set(ACTIVATIONS)


def reason_line(message: str, case_id: str = "") -> str:
    """A failure's first meaningful line, trimmed: the suite's own errors (CorrectnessError, MeasurementError, ...)
    and assertion messages without their type, other exceptions as `Type: message` without the module path, the
    case's own id in front dropped."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    line = lines[0] if lines else "failed (no message)"
    kind, sep, text = line.partition(": ")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", kind) and text.strip():
        own = kind.startswith(_OWN_MODULES) or kind.rsplit(".", 1)[-1] in _BARE_TYPES
        line = text.strip() if own else f"{kind.rsplit('.', 1)[-1]}: {text.strip()}"
    for prefix in (f"{case_id}: ", f"{case_id} "):
        if case_id and line.startswith(prefix) and len(line) > len(prefix):
            line = line[len(prefix) :]
    return line if len(line) <= 300 else line[:297] + "..."


def failed_rows(run: dict) -> list[dict]:
    """One row per failed case of the run (the node ids the plugin saved under nn_speedups.failed): its test name,
    family, model, activation, variant label and batch (as the plugin saved them under nn_speedups.failed_cases;
    else parsed from the node id), and the one-line reason. A case whose id is not model-bsN-variant keeps its id as
    the variant."""
    failed = _outcomes(run)["failed"]
    if not failed:
        return []
    saved = (run.get("nn_speedups") or {}).get("failed_cases") or {}
    activations = _activations()
    out = []
    for node_id, message in failed.items():
        path, _, name = node_id.rpartition("::")
        family = Path(path.replace("\\", "/")).stem.removeprefix("test_") if path else ""
        case_id = name[name.index("[") + 1 : -1] if "[" in name and name.endswith("]") else ""
        row = {"name": name or node_id, "fullname": node_id, "family": family, "model": None, "activation": None,
               "variant": case_id or name, "batch_size": None}  # fmt: skip
        match = _CASE_ID.match(case_id)
        if match:
            head = match["head"]
            act = next((a for a in sorted(activations, key=len, reverse=True) if head.endswith(f"-{a}")), None)
            row.update(model=head[: -len(act) - 1] if act else head, activation=act, variant=match["variant"])
            row["batch_size"] = int(match["batch"])
        row.update(saved.get(node_id) or {})
        row["variant"] = row["variant"] or case_id or name
        row["status"], row["reason"] = "failed", reason_line(message, case_id)
        out.append(row)
    return out


def failed_tables(run: dict) -> list[tuple[str, str]]:
    """The "Failed cases" section: one row per failed case with its one-line reason, and the skipped count."""
    failed = failed_rows(run)
    skipped = len(_outcomes(run)["skipped"])
    if not failed:
        return []
    header = ["family", "model", "variant", "batch", "reason"]
    body = [
        [
            r["family"] or "-",
            (r["model"] or "-") + (f" ({r['activation']})" if r["activation"] else ""),
            "-".join(filter(None, (_label({"dtype": None, **r}), r.get("world")))),
            "-" if r["batch_size"] is None else str(r["batch_size"]),
            r["reason"].replace("|", "\\|"),
        ]
        for r in failed
    ]
    note = f"\n{skipped} skipped (see -rs).\n" if skipped else ""
    return [(f"Failed cases ({len(failed)})", _markdown_table(header, body) + note)]


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _label(row: dict) -> str:
    dtype = row.get("dtype") or ""
    return row["variant"] if row["variant"].endswith(dtype) else f"{row['variant']}-{dtype}"


def _world(row: dict) -> str:
    """A distributed row's world-size point (ws1, ws2-weak, ws2-strong); empty for other rows."""
    if row.get("world_size") is None:
        return ""
    return f"ws{row['world_size']}" + (f"-{row['scaling']}" if row.get("scaling") not in (None, "reference") else "")


MEMORY_LEGEND = (
    "Memory: on a GPU the device peak while the variant runs (CUDA allocator, or NVML for ONNX Runtime/TensorRT); on "
    "a CPU `host MB` is what the case adds to the process's resident memory (its RSS peak less the settled RSS just "
    "before it, the eager baseline model included in that 'before'), so variants compare whatever order they ran in."
)


def _host(row: dict):
    """What the case added to host memory (host_mb); the process's peak for runs saved before it existed."""
    return row["host_mb"] if row.get("host_mb") is not None else row.get("peak_host_mb")


def _memory(row: dict):
    return row.get("peak_device_mb") if row.get("peak_device_mb") is not None else _host(row)


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


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
        table = _markdown_table(header, body)
        data = next((r for r in picked if r.get("data_images_per_s")), None)
        if data:
            table += (
                f"\nData pipeline, timed apart from the step ({data['data_source']}, {data['data_workers']} loader "
                f"workers): {data['data_images_per_s']:.0f} images/s, {data['data_epoch_s_projected']:.0f} s per "
                "100k images; 'with data' adds it to the step's epoch (no workers) or takes the larger (workers).\n"
            )
        tables.append((title, table))
    return tables


def model_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """(title, markdown table) per model and activation: rows are variants, columns per batch size."""
    by_model: dict[tuple, list[dict]] = defaultdict(list)
    for row in table_rows:
        if "epoch_s_projected" in row or "achieved_gbps" in row or "world_size" in row:
            continue  # training, kernel and distributed rows have tables of their own
        by_model[(row.get("family", "inference"), row["model"], row.get("activation"))].append(row)
    tables = []
    for (family, model, activation), model_rows in by_model.items():
        batches = sorted({r["batch_size"] for r in model_rows})
        device = model_rows[0].get("device", "")
        mem_kind = "peak device" if any(r.get("peak_device_mb") is not None for r in model_rows) else "host"
        header = ["variant"]
        for b in batches:
            header += [f"BS {b} ms", f"BS {b} samples/s", f"BS {b} speedup", f"BS {b} {mem_kind} MB"]
        with_accuracy = any(r.get("top1") is not None for r in model_rows)
        header += ["compile s", "check"] + (["top-1", "top-5", "agrees with eager"] if with_accuracy else [])
        variants: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in model_rows:
            variants[_label(r)][r["batch_size"]] = r
        body = []
        for label, per_batch in variants.items():
            cells = [label]
            for b in batches:
                r = per_batch.get(b)
                cells += (
                    [
                        _fmt(r["median_ms"]),
                        _fmt(r["samples_per_s"], 1),
                        _fmt(r["speedup_vs_eager"]) + "x",
                        _fmt(_memory(r), 0),
                    ]
                    if r
                    else ["-"] * 4
                )
            any_row = next(iter(per_batch.values()))
            cells += [_fmt(max(r.get("compile_s") or 0 for r in per_batch.values()), 1), _check_cell(any_row)]
            if with_accuracy:
                cells += [_pct(any_row.get("top1")), _pct(any_row.get("top5")), _pct(any_row.get("top1_agreement"))]
            body.append(cells)
        title = f"{family}: {model}" + (f" with {activation}" if activation else "") + f" ({device})"
        tables.append((title, _markdown_table(header, body)))
    return tables


def _check_cell(row: dict) -> str:
    if row.get("check") == "exact":
        return f"exact (max err {row.get('max_abs_err', 0):.1e})"
    if row.get("check") == "lowp":
        return f"lowp (cos {row.get('cosine', 0):.4f})"
    if row.get("check") == "lossy":
        cell = f"lossy ({row.get('sqnr_db', 0):.1f} dB"
        if row.get("top1_agreement") is not None:
            cell += (
                f", top-1 agrees {row['top1_agreement']:.1%} of {row['eval_images']} ({row['distinct_top1']} classes)"
            )
        return cell + ")"
    if row.get("check") == "accuracy":
        if row.get("top1_drop") is not None:
            drop, reference = -100 * row["top1_drop"], row["reference_top1"]
            return f"accuracy (top-1 {drop:+.1f} pts vs {reference:.1%}; {row['sqnr_db']:.1f} dB)"
        if row.get("kernel_cosine") is not None:
            return f"accuracy (sparse vs dense kernels cos {row['kernel_cosine']:.4f})"
    return row.get("check") or "-"


def activation_table(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Seed 001's table: each activation of a model (the rows that name one: the FastSwish family's model level),
    eager and compiled inference, latency per batch size."""
    tables = []
    for model in sorted({r["model"] for r in table_rows if r.get("activation")}):
        picked = [
            r
            for r in table_rows
            if r["model"] == model
            and r.get("activation")
            and "epoch_s_projected" not in r
            and r["variant"] in ("eager", "compile")
            and r.get("dtype") == "fp32"
        ]
        batches = sorted({r["batch_size"] for r in picked})
        cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
        for r in picked:
            cells[(r["activation"], r["variant"])][r["batch_size"]] = r
        header = ["activation", "variant"] + [f"BS {b} ms" for b in reversed(batches)]
        body = [
            [act, variant] + [_fmt(per.get(b, {}).get("median_ms")) for b in reversed(batches)]
            for (act, variant), per in cells.items()
        ]
        tables.append((f"{model}: activations, eager vs compiled (seed 001)", _markdown_table(header, body)))
    return tables


def deployment_table(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Seed 004's table for the deployment families: technique x batch, with size, memory, latency, throughput."""
    tables = []
    for family in ("onnxruntime", "tensorrt", "compression"):
        for model in sorted({r["model"] for r in table_rows if r.get("family") == family}):
            picked = sorted(
                (r for r in table_rows if r.get("family") == family and r["model"] == model),
                key=lambda r: (_label(r), r["batch_size"]),
            )
            header = ["technique", "batch", "model size MB", "top-1", "top-5", "top-1 agrees", "host MB", "VRAM MB",
                      "latency ms", "samples/s"]  # fmt: skip
            body = [
                [
                    _label(r),
                    str(r["batch_size"]),
                    _fmt(r.get("model_size_mb"), 1),
                    _pct(r.get("top1")),
                    _pct(r.get("top5")),
                    _pct(r.get("top1_agreement")),
                    _fmt(_host(r), 0),
                    _fmt(r.get("peak_device_mb"), 0),
                    _fmt(r["median_ms"]),
                    _fmt(r["samples_per_s"], 1),
                ]
                for r in picked
            ]
            tables.append(
                (f"{family}: {model}, per technique and batch (seed 004's table)", _markdown_table(header, body))
            )
    return tables


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.1f}x"


def compression_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """The compression family per model: what each variant costs and saves. Sizes are the files saved (the fp32
    state dict, the compressed model, its int8 codes, those Huffman coded, k-means codes, zstd of the file), with
    their ratios to the fp32 file; accuracy before and after the fine-tune; speed-ups at the largest batch."""
    picked = [r for r in table_rows if r.get("family") == "compression" and "teacher_median_ms" not in r]
    tables = []
    for model in sorted({r["model"] for r in picked}):
        mine = [r for r in picked if r["model"] == model]
        batch = max(r["batch_size"] for r in mine)
        header = ["variant", "params M", "GFLOPs/image", "file MB (x)", "int8 MB (x)", "Huffman MB (x)",
                  "k-means 16 / 32 MB", "zstd MB (x)", "sparsity", "top-1 before / after fine-tune", "top-1",
                  f"BS {batch} vs eager", f"BS {batch} vs compiled", "build s"]  # fmt: skip
        body = []
        for label in dict.fromkeys(_label(r) for r in mine):
            rows_ = [r for r in mine if _label(r) == label]
            r = next((x for x in rows_ if x["batch_size"] == batch), rows_[0])
            k16, k32 = r.get("kmeans16_size_mb"), r.get("kmeans32_size_mb")
            before, after = r.get("top1_before_finetune"), r.get("top1_after_finetune")
            body.append(
                [
                    label,
                    _fmt(r["params"] / 1e6 if r.get("params") else None),
                    _fmt(r["gflops"] / r["batch_size"] if r.get("gflops") else None, 3),
                    f"{_fmt(r.get('model_size_mb'), 2)} ({_ratio(r.get('size_ratio'))})",
                    f"{_fmt(r.get('quantized_size_mb'), 2)} ({_ratio(r.get('quantized_ratio'))})",
                    f"{_fmt(r.get('compressed_size_mb'), 2)} ({_ratio(r.get('compressed_ratio'))})",
                    f"{_fmt(k16, 2)} / {_fmt(k32, 2)}" if k16 or k32 else "-",
                    f"{_fmt(r.get('zstd_size_mb'), 2)} ({_ratio(r.get('zstd_ratio'))})",
                    _pct(r.get("sparsity")),
                    f"{_pct(before)} / {_pct(after)}" if before is not None else "-",
                    _pct(r.get("top1")),
                    _fmt(r.get("speedup_vs_eager")) + "x",
                    _ratio(r.get("speedup_vs_compiled")),
                    _fmt(r.get("build_s"), 1),
                ]
            )
        fp32 = next((r.get("size_fp32_mb") for r in mine if r.get("size_fp32_mb")), None)
        note = f"\nfp32 file: {_fmt(fp32, 2)} MB; (x) = times smaller than it.\n" if fp32 else ""
        tables.append((f"compression: {model}, sizes, accuracy and speed-ups", _markdown_table(header, body) + note))
    return tables


def distillation_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Distilled students against the same student trained alone (same data, same budget) and the teacher."""
    picked = [r for r in table_rows if "teacher_median_ms" in r]
    if not picked:
        return []
    header = ["student", "variant", "batch", "top-1 distilled", "top-1 trained alone", "teacher top-1",
              "student ms", "teacher ms", "student speed-up vs teacher"]  # fmt: skip
    body = [
        [
            r["model"],
            _label(r),
            str(r["batch_size"]),
            _pct(r.get("top1")),
            _pct(r.get("student_alone_top1")),
            _pct(r.get("teacher_top1")),
            _fmt(r.get("student_median_ms")),
            _fmt(r.get("teacher_median_ms")),
            _ratio(r.get("student_speedup_vs_teacher")),
        ]
        for r in picked
    ]
    return [("distillation: students against the teacher", _markdown_table(header, body))]


def _save(fig, path: Path, axes=None, used: int = 0, dpi: int = 110, tight: bool = True) -> Path:
    """Blank the grid's unused panels (axes after the first `used`), lay out, write `path` and free the figure."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:] if axes is not None else ():
        ax.axis("off")
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_accuracy_latency(run_rows: list[dict], path: Path) -> Path | None:
    """Top-1 against median latency, one panel per model and batch size, every variant of every family that has
    both (accuracy columns need trained weights), labelled family:variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in run_rows if r.get("top1") is not None and r.get("median_ms")]
    if not points:
        return None
    panels = sorted({(r["model"], r["batch_size"]) for r in points})
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4 * nrows), squeeze=False)
    families = sorted({r.get("family", "") for r in points})
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for ax, (model, batch) in zip(axes.flat, panels):
        mine = [r for r in points if (r["model"], r["batch_size"]) == (model, batch)]
        for family in families:
            xs = [r["median_ms"] for r in mine if r.get("family", "") == family]
            ys = [100 * r["top1"] for r in mine if r.get("family", "") == family]
            if xs:
                ax.scatter(xs, ys, color=colours[family], label=family, s=22)
        for r in mine:
            ax.annotate(_label(r), (r["median_ms"], 100 * r["top1"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
        ax.set_xlabel("median latency ms (log)")
        ax.set_ylabel("top-1 %")
        ax.legend(fontsize=6)
    return _save(fig, path, axes, len(panels))


def operator_charts(table_rows: list[dict]) -> list[tuple[str, str]]:
    """ONNX op-type counts per exported model (seed 000's operator chart), from rows that recorded them."""
    charts = {}
    for r in table_rows:
        if r.get("info_onnx_ops"):
            charts.setdefault((r["model"], r.get("info_onnx_dtype", "fp32")), r["info_onnx_ops"])
    tables = []
    for (model, dtype), ops in sorted(charts.items()):
        body = [[op, str(n)] for op, n in sorted(ops.items(), key=lambda kv: -kv[1])]
        tables.append((f"ONNX operators: {model} ({dtype} graph)", _markdown_table(["op type", "count"], body)))
    return tables


def plot_operator_charts(table_rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = {}
    for r in table_rows:
        if r.get("info_onnx_ops"):
            charts.setdefault(r["model"], r["info_onnx_ops"])
    if not charts:
        return None
    fig, axes = plt.subplots(len(charts), 1, figsize=(10, 3 * len(charts)), squeeze=False)
    for ax, (model, ops) in zip(axes.flat, sorted(charts.items())):
        items = sorted(ops.items(), key=lambda kv: -kv[1])
        ax.bar([k for k, _ in items], [v for _, v in items])
        ax.set_title(f"{model}: ONNX op types", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    return _save(fig, path)


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
                f"{_fmt(r['median_ms'])} / {_fmt(r.get('p90_ms'))}",
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
        tables.append((title, _markdown_table(header, body) + note))
    return tables


def plot_scaling(run_rows: list[dict], path: Path) -> Path:
    """Per model and batch: total images/s against world size with the ideal line (world size x the rate at 1),
    and scaling efficiency against the ideal 100%; weak scaling solid, strong dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = [r for r in run_rows if "world_size" in r]
    groups = sorted({(r["model"], r["batch_size"]) for r in dist})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups)), squeeze=False)
    for (ax_rate, ax_eff), (model, batch) in zip(axes, groups):
        mine = [r for r in dist if (r["model"], r["batch_size"]) == (model, batch)]
        sizes = sorted({r["world_size"] for r in mine})
        for label in sorted({_label(r) for r in mine}):
            rows_ = [r for r in mine if _label(r) == label]
            ref = next((r for r in rows_ if r["world_size"] == 1), None)
            for kind, style in (("weak", "-"), ("strong", "--")):
                points = sorted(
                    (r["world_size"], r["images_per_s"], r.get("scaling_efficiency"))
                    for r in rows_
                    if r.get("scaling") == kind or r["world_size"] == 1
                )
                if len(points) < 2 and not ref:
                    continue
                xs = [p[0] for p in points]
                ax_rate.plot(xs, [p[1] for p in points], style, marker="o", label=f"{label} {kind}")
                effs = [(x, e) for x, _, e in points if e is not None]
                ax_eff.plot(
                    [x for x, _ in effs], [100 * e for _, e in effs], style, marker="o", label=f"{label} {kind}"
                )
            if ref and label.startswith("ddp-fp32"):
                ax_rate.plot(sizes, [n * ref["images_per_s"] for n in sizes], ":", color="black", label="ideal (ddp)")
        ax_eff.axhline(100, color="black", linestyle=":", label="ideal")
        for ax in (ax_rate, ax_eff):
            ax.set_xticks(sizes)
            ax.set_xlabel("world size (ranks)")
            ax.legend(fontsize=6)
        ax_rate.set_ylabel("images/s (all ranks)")
        ax_eff.set_ylabel("scaling efficiency %")
        ax_rate.set_title(f"{model}, batch {batch}: throughput", fontsize=9)
        ax_eff.set_title(f"{model}, batch {batch}: efficiency against world size 1", fontsize=9)
    return _save(fig, path)


def comparison_table(run_rows: list[dict], base_rows: list[dict]) -> str:
    key = lambda r: (r.get("family"), r["model"], r.get("activation"), _label(r), r["batch_size"], _world(r))  # noqa: E731
    base = {key(r): r for r in base_rows}
    header = ["model", "variant", "batch", "baseline ms", "run ms", "run / baseline"]
    body = []
    for r in run_rows:
        b = base.get(key(r))
        ratio = r["median_ms"] / b["median_ms"] if b else None
        model = r["model"] + (f" ({r['activation']})" if r.get("activation") else "")
        body.append(
            [
                model,
                "-".join(filter(None, (_label(r), _world(r)))),
                str(r["batch_size"]),
                _fmt(b and b["median_ms"]),
                _fmt(r["median_ms"]),
                _fmt(ratio, 3),
            ]
        )
    return _markdown_table(header, body)


def _machine_line(run: dict) -> str:
    m = run.get("machine_info") or {}
    versions = m.get("versions") or {}
    parts = [
        f"GPU: {m.get('gpu_name') or 'none'}",
        f"CPU: {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores, {' '.join(m.get('cpu_isa') or [])})",
        "torch " + str(versions.get("torch")),
    ]
    return "; ".join(parts)


REGIME_TITLES = {
    "memory": "memory-bound sizes (working set above the {llc} last-level cache)",
    "cache": "cache-resident sizes (working set within the {llc} last-level cache: GB/s here is cache bandwidth, "
    "not memory bandwidth)",
    None: "sizes whose regime this run did not record",
}


def kernel_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """Kernel-level rows (fastswish): per mode, dtype and regime (memory-bound sizes apart from cache-resident
    ones), implementations x sizes: median time, achieved bandwidth, and its percentage of a copy timed at the same
    size."""
    kernels = [r for r in table_rows if "achieved_gbps" in r]
    tables = []
    for mode, dtype in sorted({(r["mode"], r["dtype"]) for r in kernels}):
        picked = [r for r in kernels if (r["mode"], r["dtype"]) == (mode, dtype)]
        llc_bytes = next((r["llc_bytes"] for r in picked if r.get("llc_bytes")), None)
        llc = f"{llc_bytes / 2**20:g} MB" if llc_bytes else "(unknown)"
        regimes = [g for g in ("memory", "cache", None) if any(r.get("regime") == g for r in picked)]
        for regime in regimes:
            mine = [r for r in picked if r.get("regime") == regime]
            sizes = sorted({r["elements"] for r in mine})
            header = ["implementation", "backend"] + [f"n={n:,}: ms / GB/s / % copy" for n in sizes]
            cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
            for r in mine:
                cells[(r["variant"], r.get("backend", ""))][r["elements"]] = r
            body = [["copy (reference)", "torch"] + [_copy_cell(mine, n) for n in sizes]]
            for (variant, backend), per in cells.items():
                row = [variant, backend]
                for n in sizes:
                    r = per.get(n)
                    row.append(
                        f"{_fmt(r['median_ms'], 3)} / {_fmt(r['achieved_gbps'], 1)} / {_fmt(r['pct_of_copy_bw'], 0)}%"
                        if r
                        else "-"
                    )
                body.append(row)
            title = f"fastswish kernels: {mode}, {dtype} ({picked[0]['device']}), " + REGIME_TITLES[regime].format(
                llc=llc
            )
            table = _markdown_table(header, body)
            if regime == "cache" and "memory" not in regimes:
                table += (
                    f"\nNo size in this run exceeds the {llc} last-level cache, so none measures memory bandwidth "
                    "(`--profile full` runs larger sizes).\n"
                )
            tables.append((title, table))
    return tables


def _copy_cell(rows: list[dict], n: int) -> str:
    """The copy reference at size n: GB/s of a device copy of n elements timed in the same session."""
    copy = next((r.get("copy_gbps") for r in rows if r["elements"] == n and r.get("copy_gbps")), None)
    return f"- / {_fmt(copy, 1)} / 100%" if copy else "-"


def render_tables(run: dict, baseline: dict | None = None, link_base: Path | None = None) -> str:
    """The report's tables; `link_base`: the folder of the markdown file, to which trace links are made relative
    (None: no link columns, as on the terminal)."""
    from harness.trace import report as trace_report

    run_rows = rows(run)
    text = [f"Machine: {_machine_line(run)}\n"]
    sections = model_tables(run_rows) + activation_table(run_rows) + deployment_table(run_rows)
    sections += compression_tables(run_rows) + distillation_tables(run_rows)
    sections += kernel_tables(run_rows) + training_tables(run_rows) + distributed_tables(run_rows)
    sections += trace_report.sections(run_rows, link_base)
    for title, table in sections + operator_charts(run_rows) + failed_tables(run):
        text.append(f"\n### {title}\n\n{table}")
    if sections:
        text.append(f"\n{MEMORY_LEGEND}\n")
    skipped = len(_outcomes(run)["skipped"])
    if skipped and not failed_rows(run):
        text.append(f"\n{skipped} skipped (see -rs).\n")
    if baseline is not None:
        text.append(f"\n### Compared with the baseline run\n\nBaseline machine: {_machine_line(baseline)}\n\n")
        text.append(comparison_table(run_rows, rows(baseline)))
        text.append(trace_report.grown_operators(run_rows, rows(baseline)))
    return "".join(text)


def write_csv(run_rows: list[dict], path: Path, failed: list[dict] | None = None) -> Path:
    """Every row of the run, status "passed" and an empty reason, then the failed cases (failed_rows) with status
    "failed" and their one-line reason."""
    run_rows = [{**r, "status": "passed", "reason": ""} for r in run_rows] + list(failed or [])
    fields: list[str] = []
    for r in run_rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(run_rows)
    return path


def speedup_grid(run_rows: list[dict]) -> dict[str, tuple[list[str], list[str], list[list[float | None]]]]:
    """Per panel: (variant labels, column labels "model[-activation] bsN", speedup[variant][column] or None). A panel
    is a family, or a family's bench function where the family has several (FastSwish's model inference and
    training steps differ in batch and baseline: in one panel they leave half its cells empty); a panel with its
    baseline alone is left out."""

    def function(r: dict) -> str:
        return (r.get("name") or "").split("[")[0]

    def panel(r: dict) -> str:
        family = r.get("family", "")
        several = len({function(o) for o in run_rows if o.get("family", "") == family}) > 1
        return f"{family} {function(r).removeprefix('test_').replace('_', ' ')}" if several else family

    grids = {}
    for key in sorted({panel(r) for r in run_rows}):
        mine = [r for r in run_rows if panel(r) == key]
        where = lambda r: (r["model"], r.get("activation") or "", r["batch_size"])  # noqa: E731
        columns = sorted({where(r) for r in mine})
        labels = list(dict.fromkeys(_label(r) for r in mine))  # the order the bench file lists its variants
        if len(labels) < 2:
            continue  # the baseline alone: a panel of 1.00x says nothing
        cells = {(_label(r), where(r)): r["speedup_vs_eager"] for r in mine}
        values = [[cells.get((label, column)) for column in columns] for label in labels]
        names = [f"{m}{'-' + a if a else ''} bs{b}" for m, a, b in columns]
        grids[key] = (labels, names, values)
    return grids


def plot_speedups(run_rows: list[dict], path: Path) -> Path | None:
    """One heatmap panel per family: variants down, model and batch across, each cell the speed-up over eager fp32
    (training: over vanilla) written in it; colour on a log scale, red slower, blue faster, white 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    grids = speedup_grid(run_rows)
    if not grids:
        return None
    widest = max(len(names) for _, names, _ in grids.values())
    heights = [len(labels) + 2.5 for labels, _, _ in grids.values()]
    fig_width = min(24.0, max(7.0, 3.0 + 0.7 * widest))
    fig, axes = plt.subplots(
        len(grids), 1, figsize=(fig_width, 0.3 * sum(heights) + 1.2 * len(grids)), squeeze=False,
        gridspec_kw={"height_ratios": heights}, layout="constrained",
    )  # fmt: skip
    finite = [v for _, _, values in grids.values() for row in values for v in row if v]
    span = max([2.0] + [max(v, 1 / v) for v in finite])
    norm = LogNorm(vmin=1 / span, vmax=span)
    for ax, (family, (labels, names, values)) in zip(axes.flat, grids.items()):
        data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu", norm=norm, aspect="auto")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if value is not None:
                    ax.text(j, i, f"{value:.2f}x", ha="center", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45, ha="right", rotation_mode="anchor")
        baseline = "vanilla" if "training" in family else "eager fp32"
        ax.set_title(f"{family}: speed-up over {baseline} (same run)", fontsize=9, loc="left")
        ax.set_facecolor("#eeeeee")  # cases that did not run
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, label="speed-up (log scale)")
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8) if 1 / span <= t <= span]
    bar.set_ticks(ticks, labels=[f"{t:g}x" for t in ticks])
    bar.minorticks_off()
    return _save(fig, path, dpi=100, tight=False)  # the colorbar spans the panels: no tight_layout


def plot_latency(run_rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({(r.get("family", ""), r["model"], r.get("activation") or "") for r in run_rows})
    cols = min(3, len(models))
    nrows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, (family, model, act) in zip(axes.flat, models):
        mine = [
            r for r in run_rows if (r.get("family", ""), r["model"], r.get("activation") or "") == (family, model, act)
        ]
        for label in sorted({_label(r) for r in mine}):
            points = sorted((r["batch_size"], r["median_ms"]) for r in mine if _label(r) == label)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{family}: {model}" + (f" ({act})" if act else ""), fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency ms")
        ax.legend(fontsize=6)
    return _save(fig, path, axes, len(models))


def write_report(run: dict, base: Path, baseline: dict | None = None, command: str | None = None) -> list[Path]:
    """Write base.md, base.csv, base-speedup.png and base-latency.png; return their paths. The failed cases (saved
    under run["nn_speedups"]["failed"]) get a section of the markdown and rows of the CSV, also when none passed."""
    base.parent.mkdir(parents=True, exist_ok=True)
    run_rows = rows(run)
    md = base.with_suffix(".md")
    speed_png = base.parent / f"{base.name}-speedup.png"
    latency_png = base.parent / f"{base.name}-latency.png"
    header = f"# nn-speedups report: {base.name}\n\n"
    if command:
        header += f"Command: `{command}`\n\n"
    model_rows = [r for r in run_rows if "speedup_vs_eager" in r and "epoch_s_projected" not in r]
    model_rows = [r for r in model_rows if "world_size" not in r]
    speedup_rows = [r for r in run_rows if r.get("speedup_vs_eager") is not None and "world_size" not in r]
    speed = plot_speedups(speedup_rows, speed_png) if speedup_rows else None
    latency = plot_latency(model_rows, latency_png) if model_rows else None
    body = render_tables(run, baseline, link_base=md.parent)
    if speed is not None:
        body += f"\n![speed-up per family, variant, model and batch]({speed.name})\n\n"
    if latency is not None:
        body += f"![latency against batch size]({latency.name})\n"
    md.write_text(header + body)
    csv_path = write_csv(run_rows, base.with_suffix(".csv"), failed_rows(run))
    paths = [md, csv_path] + [p for p in (speed, latency) if p is not None]
    if any("world_size" in r for r in run_rows):
        scaling_png = plot_scaling(run_rows, base.parent / f"{base.name}-scaling.png")
        paths.append(scaling_png)
        md.write_text(md.read_text() + f"\n![data-parallel scaling against the ideal line]({scaling_png.name})\n")
    accuracy_png = plot_accuracy_latency(model_rows, base.parent / f"{base.name}-accuracy-latency.png")
    if accuracy_png is not None:
        paths.append(accuracy_png)
        md.write_text(md.read_text() + f"\n![top-1 against latency, per model and batch]({accuracy_png.name})\n")
    if run_rows:
        ops_png = plot_operator_charts(run_rows, base.parent / f"{base.name}-onnx-ops.png")
        if ops_png is not None:
            paths.append(ops_png)
            md.write_text(md.read_text() + f"\n![ONNX operator chart]({ops_png.name})\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a pytest-benchmark JSON file")
    parser.add_argument("baseline", nargs="?", help="a second run to compare against")
    parser.add_argument("--out", help="report path without suffix (default: reports/<run file name>)")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run)
        baseline = load_run(args.baseline) if args.baseline else None
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports") / Path(args.run).stem
    print(render_tables(run, baseline))
    for path in write_report(run, out, baseline):
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
