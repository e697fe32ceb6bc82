"""An experiment's tables: the paper's columns with mean ± std over seeds, the per-class table of each model's best
run, and a plot of the spread (``flair-lake experiment`` writes them; docs/experiments.md).

mIoU and IoU are in percent, as in the paper; the std is the sample standard deviation over the seeds (ddof 1;
0 for a single run). The CSV files keep the full precision and every run's value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from flair_lake import schema
from flair_lake.experiments.plan import Plan, Variant

COLUMNS = ("variant", "INPUT", "FILT.", "AVG M.", "MTD", "AUG", "PARA.", "EP.", "mIoU", "runs", "paper EP.",
           "paper mIoU")


def _mark(flag: bool | None) -> str:
    return "-" if flag is None else ("✓" if flag else "×")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and sample standard deviation (0 for fewer than two values)."""
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table_rows(plan: Plan, results: dict[str, list[dict]]) -> list[dict]:
    """Return one row per variant: the paper's columns, our mean ± std over the finished runs, the paper's."""
    rows = []
    for v in plan.variants:
        runs = results.get(v.name, [])
        row = {"variant": v.name, "INPUT": v.input, "FILT.": _mark(v.filt), "AVG M.": _mark(v.avg_m),
               "MTD": _mark(v.mtd), "AUG": _mark(v.aug), "runs": len(runs), "paper mIoU": v.paper or "",
               "paper EP.": "" if v.paper_epoch is None else str(v.paper_epoch),
               "PARA.": "", "EP.": "", "mIoU": "", "miou_mean": None, "miou_std": None,
               "miou_values": [r["miou"] for r in runs], "seeds": [r["seed"] for r in runs]}
        if runs:
            m, s = mean_std([r["miou"] for r in runs])
            row.update({"PARA.": f"{runs[0]['parameters'] / 1e6:.1f}",
                        "EP.": f"{np.mean([r['best_epoch'] + 1 for r in runs]):.0f}",  # counted from 1
                        "mIoU": f"{100 * m:.1f} ± {100 * s:.1f}", "miou_mean": m, "miou_std": s})
        rows.append(row)
    return rows


def best_runs(plan: Plan, results: dict[str, list[dict]]) -> list[dict]:
    """Return each model's best run (highest test mIoU over its variants and seeds), in plan order."""
    best: dict[str, dict] = {}
    for v in plan.variants:
        for r in results.get(v.name, []):
            if v.model not in best or r["miou"] > best[v.model]["miou"]:
                best[v.model] = {**r, "variant": v.name, "model": v.model}
    return list(best.values())


def write_reports(plan: Plan, results: dict[str, list[dict]], out: Path, *, source: str = "") -> list[Path]:
    """Write ``<plan>.md``/``.csv``, ``<plan>_per_class.md``/``.csv`` and ``<plan>_spread.png``; return them."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(plan, results)
    paths = [out / f"{plan.name}.md", out / f"{plan.name}.csv", out / f"{plan.name}_per_class.md",
             out / f"{plan.name}_per_class.csv", out / f"{plan.name}_spread.png"]
    paper = (f"{plan.paper_table} of the FLAIR datapaper" if plan.paper_table else
             "the FLAIR datapaper's numbers where the plan gives them")
    md = [f"# {plan.name}: test mIoU (%), mean ± std over seeds", "",
          (f"Ours: {source}. " if source else "") + f"Paper: {paper} (the real dataset, 5 runs each).", "",
          "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    paths[0].write_text("\n".join(md) + "\n")
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*COLUMNS, "miou_mean", "miou_std", "seeds", "miou_values"])
        for r in rows:
            w.writerow([r[c] for c in COLUMNS] + [r["miou_mean"], r["miou_std"], json.dumps(r["seeds"]),
                                                  json.dumps(r["miou_values"])])
    classes = schema.CLASS_NAMES[:schema.METRIC_CLASSES]
    head = ("model", "variant", "seed", "mIoU", *classes)
    best = best_runs(plan, results)
    lines = [f"# {plan.name}: per-class test IoU (%) of each model's best run", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table, exact = [], []  # percent with one decimal (Markdown); fractions as computed (CSV)
    for r in best:
        ious = {row["class"]: row["iou"] for row in r["per_class_iou"]}
        values = [ious.get(i) for i in range(schema.METRIC_CLASSES)]
        table.append([r["model"], r["variant"], r["seed"], _pct(r["miou"]), *map(_pct, values)])
        exact.append([r["model"], r["variant"], r["seed"], r["miou"], *values])
        if r["model"] in plan.per_class:
            p = plan.per_class[r["model"]]
            table.append([r["model"], "paper (best run)", "", f"{p[0]:.1f}", *(f"{x:.1f}" for x in p[1:])])
            exact.append([r["model"], "paper (best run)", "", *(x / 100 for x in p)])
    lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in table]
    paths[2].write_text("\n".join(lines) + "\n")
    with open(paths[3], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        w.writerows(exact)
    plot_spread(rows, paths[4], title=f"{plan.name}: test mIoU per variant ({source or 'this lake'})")
    return paths


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def plot_spread(rows: list[dict], path: Path, title: str = "") -> None:
    """Plot each variant's test mIoU over seeds (points) with its mean ± std (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        vals = 100 * np.asarray(r["miou_values"], np.float64)
        if len(vals):
            ax.scatter(vals, np.full(len(vals), i), s=18, color="tab:blue", zorder=3)
            ax.errorbar(100 * r["miou_mean"], i, xerr=100 * r["miou_std"], fmt="|", color="black", ms=14,
                        capsize=4, zorder=4)
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test mIoU (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_results(folder: Path, plan: Plan, seeds: int) -> dict[str, list[dict]]:
    """Return the finished runs' records of each variant (``runs/<variant>/seed<k>/result.json``) for seeds
    0 .. ``seeds`` - 1, by seed (runs of more seeds, from an earlier invocation, stay out of the tables)."""
    out: dict[str, list[dict]] = {}
    for v in plan.variants:
        runs = []
        for k in range(seeds):
            path = folder / "runs" / v.slug / f"seed{k}" / "result.json"
            if path.exists():
                runs.append(json.loads(path.read_text()))
        out[v.name] = runs
    return out


__all__ = ["Variant", "best_runs", "mean_std", "plot_spread", "read_results", "table_rows", "write_reports"]
