"""The per-model and per-family markdown tables (the terminal prints the same text), and the memory legend.

Inference, activations, deployment, compression, distillation, ONNX operators, fastswish kernels, failed cases.
"""

from __future__ import annotations

from collections import defaultdict

from nn_speedups.core import markdown
from nn_speedups.core.round_rules import MIN_ROUNDS_FOR, MODE_GAP, MODE_MIN_SHARE
from nn_speedups.report.anomalies import DRIFT, FLAG_NAMES, SLOWER, SPREAD, codes
from nn_speedups.report.cells import _check_cell, _fmt, _pct, _ratio
from nn_speedups.report.records import _host, _label, _memory, _outcomes, failed_rows

COLD_START_LEGEND = (
    "Cold start: what a serving process pays before its first correct result, measured in this run's one process: "
    "its own start-up (Python, pytest, torch and the suite imported) plus the case's model load and its build, "
    "compile or engine load and first call (`compile s`). A fresh process per case would also pay the engine's import "
    "(onnxruntime, TensorRT) that only the run's first such case paid here, and finds Inductor's and the engines' "
    "caches as the run record says (record.inductor_cache, artifacts/)."
)
MEMORY_LEGEND = (
    "Memory: on a GPU the device peak while the variant runs (CUDA allocator, or NVML for ONNX Runtime/TensorRT); on "
    "a CPU `host MB` is what the case adds to the process's resident memory (its RSS peak less the settled RSS just "
    "before it, the eager baseline model included in that 'before'), so variants compare whatever order they ran in."
)


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
        header += ["compile s", "cold start s", "check"] + (
            ["top-1", "top-5", "agrees with eager"] if with_accuracy else []
        )
        header.append("flags")
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
            cold = [r["cold_start_s"] for r in per_batch.values() if r.get("cold_start_s") is not None]
            cells += [
                _fmt(max(r.get("compile_s") or 0 for r in per_batch.values()), 1),
                _fmt(max(cold), 1) if cold else "-",
            ]
            cells.append(_check_cell(any_row))
            if with_accuracy:
                cells += [_pct(any_row.get("top1")), _pct(any_row.get("top5")), _pct(any_row.get("top1_agreement"))]
            flagged = [f"BS {b}: {', '.join(codes(per_batch[b]))}" for b in batches if codes(per_batch.get(b) or {})]
            cells.append("; ".join(flagged) or "-")
            body.append(cells)
        title = f"{family}: {model}" + (f" with {activation}" if activation else "") + f" ({device})"
        tables.append((title, markdown.table(header, body)))
    return tables


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
        tables.append((f"{model}: activations, eager vs compiled", markdown.table(header, body)))
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
            tables.append((f"{family}: {model}, per technique and batch", markdown.table(header, body)))
    return tables


def _versus_reference(r: dict) -> str:
    """The row's top-1 change against its reference, and which reference: its matched control, or eager."""
    if r.get("top1_drop") is None:
        return "-"
    return f"{-100 * r['top1_drop']:+.1f} ({'control' if r.get('control_top1') is not None else 'eager'})"


def _control_rows(mine: list[dict], header: list[str]) -> list[list[str]]:
    """One row per matched control the variants were compared with (nn_speedups' compression bench: the
    uncompressed model fine-tuned with the variant's steps and lr), its top-1 in the top-1 column."""
    controls = {}
    for r in mine:
        if r.get("control_top1") is not None:
            controls[(r.get("control_steps"), r.get("control_lr"))] = r["control_top1"]
    out = []
    for (steps, lr), top1 in sorted(controls.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        cells = ["-"] * len(header)
        cells[0] = f"control: eager + {steps} fine-tune steps, lr {lr:g}"
        cells[header.index("top-1")] = _pct(top1)
        out.append(cells)
    return out


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
                  "vs reference (pts)",
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
                    _versus_reference(r),
                    _fmt(r.get("speedup_vs_eager")) + "x",
                    _ratio(r.get("speedup_vs_compiled")),
                    _fmt(r.get("build_s"), 1),
                ]
            )
        body += _control_rows(mine, header)
        fp32 = next((r.get("size_fp32_mb") for r in mine if r.get("size_fp32_mb")), None)
        note = f"\nfp32 file: {_fmt(fp32, 2)} MB; (x) = times smaller than it." if fp32 else ""
        note += (
            "\nvs reference: top-1 points against the row's reference: a variant that trains (QAT, pruning with a "
            "fine-tune) against its matched control, the uncompressed model fine-tuned the same steps on the same "
            "data (the control rows); the others against eager, the uncompressed model as loaded.\n"
        )
        tables.append((f"compression: {model}, sizes, accuracy and speed-ups", markdown.table(header, body) + note))
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
    return [("distillation: students against the teacher", markdown.table(header, body))]


def operator_charts(table_rows: list[dict]) -> list[tuple[str, str]]:
    """ONNX op-type counts per exported model (its operator chart), from rows that recorded them."""
    charts = {}
    for r in table_rows:
        if r.get("info_onnx_ops"):
            charts.setdefault((r["model"], r.get("info_onnx_dtype", "fp32")), r["info_onnx_ops"])
    tables = []
    for (model, dtype), ops in sorted(charts.items()):
        body = [[op, str(n)] for op, n in sorted(ops.items(), key=lambda kv: -kv[1])]
        tables.append((f"ONNX operators: {model} ({dtype} graph)", markdown.table(["op type", "count"], body)))
    return tables


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
            table = markdown.table(header, body)
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
            r["reason"],  # markdown.table escapes its `|`
        ]
        for r in failed
    ]
    note = f"\n{skipped} skipped (see -rs).\n" if skipped else ""
    return [(f"Failed cases ({len(failed)})", markdown.table(header, body) + note)]


def flag_tables(table_rows: list[dict]) -> list[tuple[str, str]]:
    """The "Look twice" section: every flagged row (nn_speedups.report.anomalies) with each flag's few words."""
    flagged = [r for r in table_rows if r.get("flags")]
    if not flagged:
        return []
    header = ["family", "model", "variant", "batch", "flag", "what to look at"]
    body = []
    for r in flagged:
        model = (r.get("model") or "-") + (f" ({r['activation']})" if r.get("activation") else "")
        where = [r.get("family") or "-", model, _label(r), str(r.get("batch_size") or "-")]
        for flag in r["flags"]:
            code, _, text = flag.partition(": ")
            body.append(where + [FLAG_NAMES.get(code, code), text])
    legend = (
        f"\nFlags: more than {SLOWER:g}x slower than eager; a smaller batch whose call takes longer than a larger "
        f"batch's; rounds whose second half's median is {DRIFT:g}x off the first half's; rounds in two modes across "
        f"a {MODE_GAP - 1:.0%} gap (each holding {MODE_MIN_SHARE:.0%} of the rounds); an interquartile range above "
        f"{SPREAD:.0%} of the median; an eager model whose outputs differed when run twice on the same inputs. "
        f"Percentiles are printed from {MIN_ROUNDS_FOR['p90']} rounds (p90) and {MIN_ROUNDS_FOR['p99']} (p99), the "
        "counts MLPerf LoadGen's early stopping needs; below that the round count.\n"
    )
    return [(f"Look twice ({len(flagged)} flagged rows)", markdown.table(header, body) + legend)]
