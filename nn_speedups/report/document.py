"""The whole report of a run: its tables as one markdown text, and its files (markdown, CSV and PNGs)."""

from __future__ import annotations

from pathlib import Path

from nn_speedups.report.compare import comparison_table
from nn_speedups.report.csvfile import write_csv
from nn_speedups.report.plots import (
    plot_accuracy_latency,
    plot_latency,
    plot_operator_charts,
    plot_scaling,
    plot_speedups,
)
from nn_speedups.report.records import _outcomes, failed_rows, rows
from nn_speedups.report.tables import (
    COLD_START_LEGEND,
    MEMORY_LEGEND,
    activation_table,
    compression_tables,
    deployment_table,
    distillation_tables,
    failed_tables,
    flag_tables,
    kernel_tables,
    model_tables,
    operator_charts,
)
from nn_speedups.report.training import distributed_tables, training_tables


def render_tables(run: dict, baseline: dict | None = None, link_base: Path | None = None) -> str:
    """The report's tables; `link_base`: the folder of the markdown file, to which trace links are made relative
    (None: no link columns, as on the terminal)."""
    from nn_speedups.trace import report as trace_report

    run_rows = rows(run)
    text = [f"Machine: {_machine_line(run)}\n"]
    sections = model_tables(run_rows) + activation_table(run_rows) + deployment_table(run_rows)
    sections += compression_tables(run_rows) + distillation_tables(run_rows)
    sections += kernel_tables(run_rows) + training_tables(run_rows) + distributed_tables(run_rows)
    sections += trace_report.sections(run_rows, link_base)
    for title, table in sections + operator_charts(run_rows) + flag_tables(run_rows) + failed_tables(run):
        text.append(f"\n### {title}\n\n{table}")
    if sections:
        text.append(f"\n{MEMORY_LEGEND}\n\n{COLD_START_LEGEND}\n")
    skipped = len(_outcomes(run)["skipped"])
    if skipped and not failed_rows(run):
        text.append(f"\n{skipped} skipped (see -rs).\n")
    if baseline is not None:
        text.append(f"\n### Compared with the baseline run\n\nBaseline machine: {_machine_line(baseline)}\n\n")
        text.append(comparison_table(run_rows, rows(baseline)))
        text.append(trace_report.grown_operators(run_rows, rows(baseline)))
    return "".join(text)


def _machine_line(run: dict) -> str:
    m = run.get("machine_info") or {}
    versions = m.get("versions") or {}
    parts = [
        f"GPU: {m.get('gpu_name') or 'none'}",
        f"CPU: {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores, {' '.join(m.get('cpu_isa') or [])})",
        "torch " + str(versions.get("torch")),
    ]
    return "; ".join(parts)


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
