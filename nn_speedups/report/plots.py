"""The report's PNGs (matplotlib, Agg): speed-up heatmaps, latency, top-1 vs latency, ONNX ops, DDP scaling."""

from __future__ import annotations

import math
from pathlib import Path

from nn_speedups.report.records import _label, speedup_grid


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


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (as fast or faster and at least as
    accurate, better on one), ordered by latency: the variants worth choosing from."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_accuracy_latency(run_rows: list[dict], path: Path) -> Path | None:
    """Top-1 against median latency, one panel per model and batch size, every variant of every family that has
    both (accuracy columns need trained weights). Each point carries a number, listed beside the panel with its
    family:variant, so no label is printed over another; the Pareto front (no variant both faster and more accurate)
    is drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [r for r in run_rows if r.get("top1") is not None and r.get("median_ms")]
    if not points:
        return None
    panels = sorted({(r["model"], r["batch_size"]) for r in points})
    cols = min(2, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(8.5 * cols, 4.2 * nrows), squeeze=False)
    families = sorted({r.get("family", "") for r in points})
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for ax, (model, batch) in zip(axes.flat, panels):
        mine = sorted((r for r in points if (r["model"], r["batch_size"]) == (model, batch)),
                      key=lambda r: (r["median_ms"], -r["top1"]))  # fmt: skip
        xy = [(r["median_ms"], 100 * r["top1"]) for r in mine]
        front = pareto_front(xy)
        fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
        ax.step(fx, fy, where="post", color="0.55", linewidth=1, zorder=1, label="Pareto front")
        for family in families:
            chosen = [p for p, r in zip(xy, mine) if r.get("family", "") == family]
            if chosen:
                ax.scatter(*zip(*chosen), color=colours[family], label=family, s=26, zorder=2)
        legend = []
        for number, ((x, y), r) in enumerate(zip(xy, mine), 1):
            ax.annotate(str(number), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            star = "*" if number - 1 in front else " "
            legend.append(f"{number:>2}{star} {r.get('family', '')}:{_label(r)}  {y:.1f}%  {x:.3g} ms")
        ax.text(1.02, 1.0, "\n".join(legend + ["", "* on the Pareto front"]), transform=ax.transAxes, fontsize=6,
                va="top", family="monospace")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
        ax.set_xlabel("median latency ms (log)")
        ax.set_ylabel("top-1 %")
        ax.legend(fontsize=6, loc="lower right")
    fig.subplots_adjust(right=0.62 if cols == 1 else 0.8, wspace=0.9, hspace=0.45)
    return _save(fig, path, axes, len(panels), tight=False)


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
