"""Every ```python block of docs/xarray.md runs, in order, against the monthly synthetic lake; the NDVI curve it
computes equals `flair-lake stats`'s."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import zarr

from flair_lake import lake as lk
from flair_lake import schema, stats
from flair_lake.preview import centre_ndvi

DOC = Path(__file__).resolve().parents[1] / "docs" / "xarray.md"


def python_blocks(text: str) -> list[str]:
    """Return the code of every ```python block of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_examples_of_docs_xarray_run(monthly_lake, tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # the examples write their files into the working folder
    ns: dict = {"LAKE": monthly_lake}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[python block {i}]", "exec"), ns)  # noqa: S102 - the documentation's own code
    assert (tmp_path / "IMG.tif").exists() and (tmp_path / "ndvi_by_class.png").exists()

    root = zarr.open_group(monthly_lake, mode="r")
    rows = lk.valid_rows(root)
    vg = root[f"{schema.VIEWS_GROUP}/{lk.resolve_view(root, monthly_lake, None, monthly=True)}"]
    want = stats.ndvi_by_class(centre_ndvi(vg["monthly"][:][rows], vg["month_count"][:][rows]),
                               stats.label_histograms(root, rows))
    curve = ns["curve"]
    assert want and int(np.isfinite(curve.values).sum()) == len(want)
    for row in want:
        got = float(curve.sel({"class": row["class"], "month": row["month"]}))
        assert np.isclose(got, row["ndvi"], rtol=1e-9), row
