"""``flair-lake stats``: statistics of a lake as CSV files and charts.

- ``class_distribution.csv`` / ``.png``: per split, the pixel count and fraction of each raw class 1..19 over the
  labelled pixels (code 0, no label, is left out) of the ingested patches.
- ``ndvi_by_class.csv`` / ``.png`` (needs a monthly view): the mean NDVI per class and month, pixel-weighted:
  each patch contributes the NDVI of its window's 10x10 centre in that month (see
  :func:`flair_lake.preview.centre_ndvi`; empty months contribute nothing) with a weight equal to the number of
  its label pixels of the class. ``pixels`` is the total weight.
- ``clouds.csv`` / ``.png`` (needs a view): per domain and calendar month of the Sentinel-2 dates, the
  patch-dates kept and dropped by the view's cloud/snow filter and the dropped fraction.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.preview import MONTH_NAMES, centre_ndvi

CLASSES = np.arange(1, schema.NUM_RAW_CLASSES + 1)


def _split_name(code: int) -> str:
    return schema.SPLIT_NAMES[code] if code < len(schema.SPLIT_NAMES) else "unknown"


def _shards(root, rows: np.ndarray):
    """Yield (a, b, members) per shard: the shard's row range and the given rows inside it."""
    s = int(root.attrs["patches_per_shard"])
    for shard in np.unique(rows // s):
        a, b = int(shard) * s, min((int(shard) + 1) * s, lk.n_rows(root))
        yield a, b, rows[(rows >= a) & (rows < b)]


def label_histograms(root, rows: np.ndarray) -> np.ndarray:
    """Return (len(rows), 20) pixel counts of raw codes 0..19 per patch, reading one shard slice at a time."""
    out = np.zeros((rows.size, schema.NUM_RAW_CLASSES + 1), np.int64)
    pos = {int(r): i for i, r in enumerate(rows)}
    for a, b, members in _shards(root, rows):
        labels = root["label"][a:b]  # basic indexing: whole shard
        sub = labels[members - a].reshape(members.size, -1).astype(np.int64)
        offs = (np.arange(members.size) * 256)[:, None]
        hist = np.bincount((sub + offs).ravel(), minlength=members.size * 256).reshape(members.size, 256)
        out[[pos[int(m)] for m in members]] = hist[:, :schema.NUM_RAW_CLASSES + 1]
    return out


def class_distribution(split: np.ndarray, hist: np.ndarray) -> list[dict]:
    """Return rows ``split, class, name, pixels, fraction`` for every split present and class 1..19."""
    out = []
    for code in np.unique(split):
        counts = hist[split == code][:, 1:].sum(0)
        total = counts.sum()
        for c, n in zip(CLASSES, counts):
            out.append({"split": _split_name(int(code)), "class": int(c), "name": schema.RAW_CLASSES[int(c)][0],
                        "pixels": int(n), "fraction": float(n / total) if total else 0.0})
    return out


def ndvi_by_class(ndvi: np.ndarray, hist: np.ndarray) -> list[dict]:
    """Return rows ``class, name, month, ndvi, pixels``: per class and month the label-pixel-weighted mean NDVI.

    Args:
        ndvi: (patches, 12) centre NDVI, NaN for empty months.
        hist: (patches, 20) label pixel counts of raw codes 0..19.
    """
    valid = np.isfinite(ndvi)
    w = hist[:, 1:].astype(np.float64)  # (p, 19)
    weight = w.T @ valid  # (19, 12)
    total = w.T @ np.where(valid, ndvi, 0.0)
    out = []
    for i, c in enumerate(CLASSES):
        for m in range(schema.MONTHS):
            if weight[i, m] > 0:
                out.append({"class": int(c), "name": schema.RAW_CLASSES[int(c)][0], "month": m + 1,
                            "ndvi": float(total[i, m] / weight[i, m]), "pixels": int(weight[i, m])})
    return out


def cloud_table(root, view: str, rows: np.ndarray) -> list[dict]:
    """Return rows ``domain, month, kept, dropped, dropped_fraction`` of the view's patch-dates."""
    vg = root[f"{schema.VIEWS_GROUP}/{view}"]
    keep = vg["keep"][:]
    zone, dom = root["zone"][:], root["domain"][:]
    areas, domains = root.attrs["areas"], root.attrs["domains"]
    kept = np.zeros((len(domains), schema.MONTHS), np.int64)
    seen = np.zeros((len(domains), schema.MONTHS), np.int64)
    for code in np.unique(zone[rows]):
        members = rows[zone[rows] == code]
        dates = root[f"{schema.SENTINEL_GROUP}/{areas[int(code)]}/dates"][:].astype("datetime64[D]")
        month = dates.astype("datetime64[M]").astype(np.int64) % schema.MONTHS
        t = dates.size
        k = keep[members, :t]  # in-memory numpy, not the zarr array
        for d in np.unique(dom[members]):
            sel = dom[members] == d
            kept[d] += np.bincount(month, weights=k[sel].sum(0), minlength=schema.MONTHS).astype(np.int64)
            seen[d] += np.bincount(month, minlength=schema.MONTHS) * int(sel.sum())
    out = []
    for d in np.flatnonzero(seen.sum(1)):
        for m in range(schema.MONTHS):
            n, kp = int(seen[d, m]), int(kept[d, m])
            out.append({"domain": domains[int(d)], "month": m + 1, "kept": kp, "dropped": n - kp,
                        "dropped_fraction": (n - kp) / n if n else 0.0})
    return out


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _plot_distribution(rows: list[dict], path: Path, plt) -> None:
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, axes = plt.subplots(len(splits), 1, figsize=(10, 2.2 * len(splits) + 1.2), sharex=True, squeeze=False)
    colours = [schema.RAW_CLASSES[int(c)][1] for c in CLASSES]
    for ax, split in zip(axes[:, 0], splits):
        frac = [r["fraction"] for r in rows if r["split"] == split]
        ax.bar(CLASSES, frac, color=colours, edgecolor="black", linewidth=0.4)
        ax.set_ylabel(f"{split}\nfraction", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(CLASSES, [f"{c} {schema.RAW_CLASSES[int(c)][0]}" for c in CLASSES], rotation=60,
                           ha="right", fontsize=8)
    axes[0, 0].set_title("class distribution per split (labelled pixels)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ndvi(rows: list[dict], path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(10, 5))
    for c in sorted({r["class"] for r in rows}):
        pts = [(r["month"], r["ndvi"]) for r in rows if r["class"] == c]
        ax.plot(*zip(*pts), "o-", ms=3, color=schema.RAW_CLASSES[c][1], label=f"{c} {schema.RAW_CLASSES[c][0]}",
                markeredgecolor="black", markeredgewidth=0.3)
    ax.set_xticks(range(1, schema.MONTHS + 1), MONTH_NAMES)
    ax.set_ylabel("NDVI (window centre)")
    ax.set_title("mean NDVI per class through the year (label-pixel weighted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_clouds(rows: list[dict], path: Path, plt) -> None:
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    grid = np.array([[r["dropped_fraction"] for r in rows if r["domain"] == d] for d in domains])
    dropped = np.array([[r["dropped"] for r in rows if r["domain"] == d] for d in domains])
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(domains) + 1.6))
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    for (i, m), v in np.ndenumerate(dropped):
        ax.text(m, i, str(v), ha="center", va="center", fontsize=7, color="white" if grid[i, m] > 0.5 else "black")
    ax.set_xticks(range(schema.MONTHS), MONTH_NAMES)
    ax.set_yticks(range(len(domains)), domains)
    ax.set_title("patch-dates dropped per month and domain (shade: fraction, number: count)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_stats(lake: str, out: str | Path, *, view: str | None = None,
                storage_options: dict | None = None) -> dict:
    """Write the statistics CSVs and charts of ``lake`` into the folder ``out``.

    Args:
        lake: path or URL of the lake.
        out: output folder (created).
        view: view for the NDVI and cloud statistics (default: the latest with a monthly cube; skipped when
            there is none).
        storage_options: fsspec options of an object store.

    Returns:
        ``{"files": [...], "view": view, "lines": [...]}``.

    Raises:
        LakeStateError: ``view`` does not exist (the message lists the views).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = lk.open_lake(lake, storage_options=storage_options)
    view = lk.resolve_view(root, lake, view, monthly=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = lk.valid_rows(root)
    hist = label_histograms(root, rows)
    files = []
    dist = class_distribution(root["split"][:][rows], hist)
    _write_csv(out / "class_distribution.csv", dist, ["split", "class", "name", "pixels", "fraction"])
    _plot_distribution(dist, out / "class_distribution.png", plt)
    files += ["class_distribution.csv", "class_distribution.png"]
    lines = []
    vg = root[f"{schema.VIEWS_GROUP}/{view}"] if view else None
    if vg is not None and "monthly" in vg:
        ndvi = np.full((rows.size, schema.MONTHS), np.nan)
        count = vg["month_count"][:]
        pos = 0
        for a, b, members in _shards(root, rows):
            cube = vg["monthly"][a:b]  # whole shard, basic indexing
            ndvi[pos:pos + members.size] = centre_ndvi(cube[members - a], count[members])
            pos += members.size
        table = ndvi_by_class(ndvi, hist)
        _write_csv(out / "ndvi_by_class.csv", table, ["class", "name", "month", "ndvi", "pixels"])
        _plot_ndvi(table, out / "ndvi_by_class.png", plt)
        files += ["ndvi_by_class.csv", "ndvi_by_class.png"]
    else:
        lines.append(f"no monthly view in {lake}: NDVI per class skipped (`flair-lake filter {lake} --monthly`)")
    if vg is not None:
        clouds = cloud_table(root, view, rows)
        _write_csv(out / "clouds.csv", clouds, ["domain", "month", "kept", "dropped", "dropped_fraction"])
        _plot_clouds(clouds, out / "clouds.png", plt)
        files += ["clouds.csv", "clouds.png"]
    else:
        lines.append(f"no view in {lake}: cloud statistics skipped (`flair-lake filter {lake}`)")
    lines.insert(0, f"wrote {len(files)} files to {out} ({rows.size} patches, view {view}): {', '.join(files)}")
    return {"files": [str(out / f) for f in files], "view": view, "lines": lines}
