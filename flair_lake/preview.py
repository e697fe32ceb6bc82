"""``flair-lake preview``: a quick-look picture of a few patches of a lake, one row per patch.

Columns: true colour (R, G, B), false colour (NIR, R, G), elevation, the label in the official FLAIR colours,
the view's monthly Sentinel-2 true-colour strip (B4, B3, B2 of the 40x40 window; empty months crossed out) and
the NDVI profile of the window's centre (months without a kept date skipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.config import PREVIEW_SEED
from flair_lake.errors import UsageError
from flair_lake.raw.names import parse_patch_name, patch_name

DPI = 100
ROW_INCHES = 2.4
WIDTH_INCHES = 19.0
S2_RGB = tuple(schema.S2_BANDS.index(b) for b in ("B4", "B3", "B2"))
S2_RED, S2_NIR = schema.S2_BANDS.index("B4"), schema.S2_BANDS.index("B8")
S2_STRETCH = 2500.0  # reflectance x 10000 mapped to full brightness
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def parse_patch_id(text: str | int) -> int:
    """Return the numeric id of ``IMG_040001``, ``040001`` or ``40001``.

    Raises:
        UsageError: not a patch id.
    """
    patch_id = parse_patch_name(text)
    if patch_id is None:
        raise UsageError(f"--patch {text!r} is not a patch id; give IMG_<digits> or the digits, e.g. IMG_040001")
    return patch_id


def centre_ndvi(monthly: np.ndarray, count: np.ndarray, crop: int = schema.S2_CENTRE_CROP) -> np.ndarray:
    """Return the NDVI of the window's ``crop`` x ``crop`` centre per month; NaN for empty months.

    Args:
        monthly: (..., 12, 10, W, W) monthly cube, DN.
        count: (..., 12) kept dates per month (0 = empty).
        crop: side of the centre square (10 px: the pixels under the aerial patch).

    Returns:
        (..., 12) float64: (B8 - B4) / (B8 + B4) of the centre's mean reflectances.
    """
    w = monthly.shape[-1]
    a = (w - crop) // 2
    centre = monthly[..., a:a + crop, a:a + crop].astype(np.float64).mean(axis=(-1, -2))
    red, nir = centre[..., S2_RED], centre[..., S2_NIR]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
    return np.where(count > 0, ndvi, np.nan)


def pick_rows(root, lake: str, patch_ids: tuple = (), random_n: int | None = None,
              seed: int = PREVIEW_SEED) -> np.ndarray:
    """Return the lake rows of ``patch_ids`` (in that order) or of ``random_n`` random status-1 patches.

    Raises:
        UsageError: both or neither selection given, or an id that is not an ingested patch.
    """
    if bool(patch_ids) == bool(random_n):
        raise UsageError("give --patch ID (repeatable) or --random N, not both and not neither")
    ok = lk.valid_rows(root)
    ids = root["patch_id"][:][ok]
    if random_n:
        if random_n < 1:
            raise UsageError(f"--random {random_n}: expected at least 1")
        return np.sort(np.random.default_rng(seed).choice(ok, size=min(random_n, ok.size), replace=False))
    rows = []
    for text in patch_ids:
        pid = parse_patch_id(text)
        hit = np.flatnonzero(ids == pid)
        if hit.size == 0:
            examples = ", ".join(patch_name(i) for i in ids[:4])
            raise UsageError(f"patch {patch_name(pid)} is not an ingested patch of {lake}; valid ids are in its "
                             f"patch_id array (`flair-lake info {lake}` lists domains and quarantine), e.g. "
                             f"{examples}; or use --random N")
        rows.append(int(ok[hit[0]]))
    return np.asarray(rows)


def _label_cmap():
    """Return (colormap, norm) drawing raw codes 0..19 in the official colours (0, no label, light grey)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    colours = ["#d9d9d9"] + [schema.RAW_CLASSES[c][1] for c in range(1, schema.NUM_RAW_CLASSES + 1)]
    return ListedColormap(colours), BoundaryNorm(np.arange(-0.5, schema.NUM_RAW_CLASSES + 1.5), len(colours))


def _stretch(img: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 image stretched to its 2nd-98th percentiles."""
    lo, hi = np.percentile(img, (2, 98))
    return (np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8)


def _strip(cube: np.ndarray, count: np.ndarray, gap: int = 2) -> np.ndarray:
    """Return the 12 monthly true-colour windows side by side as one (W, 12 * (W + gap), 3) float image."""
    rgb = np.clip(cube[:, S2_RGB].astype(np.float32) / S2_STRETCH, 0, 1).transpose(0, 2, 3, 1)  # (12, W, W, 3)
    rgb[count == 0] = 0.55
    w = rgb.shape[1]
    out = np.ones((w, schema.MONTHS * (w + gap), 3), np.float32)
    for m in range(schema.MONTHS):
        out[:, m * (w + gap): m * (w + gap) + w] = rgb[m]
    return out


def figure_size(n_rows: int) -> tuple[int, int]:
    """Return the (width, height) in pixels of a preview of ``n_rows`` patches."""
    return round(WIDTH_INCHES * DPI), round((ROW_INCHES * n_rows + 0.9) * DPI)


def render_preview(lake: str, out: str | Path, *, patch_ids: tuple = (), random_n: int | None = None,
                   view: str | None = None, seed: int = PREVIEW_SEED, storage_options: dict | None = None) -> dict:
    """Write the preview PNG of the chosen patches and return what was drawn.

    Args:
        lake: path or URL of the lake.
        out: PNG path (its folder is created).
        patch_ids: patch ids (``IMG_040001`` or ``40001``).
        random_n: draw this many random ingested patches instead.
        view: view whose monthly cube is shown (default: the latest with one; no Sentinel columns when none).
        seed: seed of the random draw.
        storage_options: fsspec options of an object store.

    Returns:
        ``{"path", "patch_ids", "view", "size"}``; size is (width, height) in pixels.

    Raises:
        UsageError: bad selection or unknown patch id. LakeStateError: unknown view.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    root = lk.open_lake(lake, storage_options=storage_options)
    rows = pick_rows(root, lake, tuple(patch_ids), random_n, seed)
    view = lk.resolve_view(root, lake, view, monthly=True)
    vg = root[f"{schema.VIEWS_GROUP}/{view}"] if view else None
    monthly = vg is not None and "monthly" in vg
    ids = root["patch_id"][:]
    cmap, norm = _label_cmap()
    w_px, h_px = figure_size(len(rows))
    fig = plt.figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
    grid = fig.add_gridspec(len(rows), 6, width_ratios=[1, 1, 1, 1, 6.6, 2.2], left=0.05, right=0.86,
                            top=1 - 0.5 / (h_px / DPI), bottom=0.4 / (h_px / DPI), wspace=0.12, hspace=0.25)
    present: set[int] = set()
    titles = ("true colour", "NIR-R-G", "elevation", "label", f"monthly Sentinel-2 B4-B3-B2 ({view})",
              "NDVI, window centre")
    for i, r in enumerate(rows):
        r = int(r)  # basic indexing: one chunk per read
        aerial, label = root["aerial"][r], root["label"][r]
        present.update(int(c) for c in np.unique(label))
        panels = (_stretch(aerial[[0, 1, 2]].transpose(1, 2, 0)), _stretch(aerial[[3, 0, 1]].transpose(1, 2, 0)))
        axes = [fig.add_subplot(grid[i, j]) for j in range(6)]
        axes[0].imshow(panels[0])
        axes[1].imshow(panels[1])
        axes[2].imshow(aerial[4], cmap="terrain")
        axes[3].imshow(label, cmap=cmap, norm=norm, interpolation="nearest")
        axes[0].set_ylabel(patch_name(ids[r]), fontsize=9)
        if monthly:
            cube, count = vg["monthly"][r], vg["month_count"][r]
            strip = _strip(cube, count)
            axes[4].imshow(strip, interpolation="nearest")
            w = cube.shape[-1]
            for m in np.flatnonzero(count == 0):  # empty months: crossed out
                x0 = m * (w + 2)
                axes[4].plot([x0, x0 + w - 1], [0, w - 1], color="#b00000", lw=1)
                axes[4].plot([x0, x0 + w - 1], [w - 1, 0], color="#b00000", lw=1)
            axes[4].set_xticks([m * (w + 2) + w / 2 for m in range(schema.MONTHS)], [n[0] for n in MONTH_NAMES],
                               fontsize=7)
            ndvi = centre_ndvi(cube, count)
            have = np.isfinite(ndvi)
            axes[5].plot(np.flatnonzero(have) + 1, ndvi[have], "o-", color="#2a7f2a", ms=3)
            axes[5].set_xlim(0.5, schema.MONTHS + 0.5)
            axes[5].set_ylim(-0.2, 1.0)
            axes[5].set_xticks(range(1, schema.MONTHS + 1), [n[0] for n in MONTH_NAMES], fontsize=7)
            axes[5].tick_params(axis="y", labelsize=7)
            axes[5].grid(alpha=0.3)
        else:
            for ax in axes[4:]:
                ax.text(0.5, 0.5, "no view with a monthly cube\n(flair-lake filter --monthly)", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes)
        for j, ax in enumerate(axes):
            if j < 4 or (j == 4 and monthly) or not monthly:
                ax.set_yticks([])
                if j != 4 or not monthly:
                    ax.set_xticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    handles = [Patch(facecolor=schema.RAW_CLASSES[c][1], edgecolor="black", lw=0.4,
                     label=f"{c} {schema.RAW_CLASSES[c][0]}") for c in sorted(present) if c in schema.RAW_CLASSES]
    if 0 in present:
        handles.append(Patch(facecolor="#d9d9d9", edgecolor="black", lw=0.4, label="0 no label"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.87, 0.5), fontsize=8, frameon=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return {"path": str(out), "patch_ids": [int(ids[int(r)]) for r in rows], "view": view, "size": (w_px, h_px)}
