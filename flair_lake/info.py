"""``flair-lake info``: what a lake holds, how it is stored, and what every run did."""

from __future__ import annotations

from collections import Counter

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.config import FilterConfig
from flair_lake.errors import UsageError
from flair_lake.raw.names import patch_name


def _codec_name(arr) -> str:
    """Return a short description of an array's bytes-to-bytes codecs."""
    comps = getattr(arr, "compressors", ()) or ()
    if not comps:
        return "none"
    out = []
    for c in comps:
        d = c.to_dict()
        conf = d.get("configuration", {})
        if d["name"] == "blosc":
            out.append(f"blosc-{conf.get('cname')}-{conf.get('clevel')}-{conf.get('shuffle')}")
        else:
            out.append(f"{d['name']}-{conf.get('level', '')}".rstrip("-"))
    return "+".join(out)


def _array_row(path: str, arr) -> dict:
    """Return shape, chunks, shards, codec, sizes of one array."""
    stored = int(arr.nbytes_stored())
    return {"path": path, "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards else None, "codec": _codec_name(arr),
            "bytes": int(arr.nbytes), "stored_bytes": stored}


def describe(lake: str, *, storage_options: dict | None = None) -> dict:
    """Return a JSON-able report of ``lake``."""
    root = lk.open_lake(lake, storage_options=storage_options)
    attrs = root.attrs.asdict()
    status = root[schema.STATUS_ARRAY][:]
    ok = status == schema.STATUS_OK
    domains = np.asarray(attrs["domains"] or [""])
    dom = root["domain"][:][ok]
    split = root["split"][:][ok]
    names = {schema.SPLIT_CODES[s]: s for s in schema.SPLIT_NAMES}
    per_split = Counter(names.get(int(s), "unknown") for s in split)
    per_domain = Counter(str(domains[d]) for d in dom) if dom.size else Counter()
    arrays = [_array_row(name, arr) for name, arr in sorted(root.arrays())]
    sentinel = root.get(schema.SENTINEL_GROUP)
    areas = []
    s2_stored = 0
    if sentinel is not None:
        for name, g in sorted(sentinel.groups()):
            d = g["data"]
            stored = sum(int(g[k].nbytes_stored()) for k in ("data", "masks", "dates"))
            s2_stored += stored
            areas.append({"area": name, "dates": int(d.shape[0]), "height": int(d.shape[2]),
                          "width": int(d.shape[3]), "complete": bool(g.attrs.get("complete")),
                          "stored_bytes": stored})
    if areas:
        first = sentinel[areas[0]["area"]]
        for k in ("data", "masks"):
            row = _array_row(f"{schema.SENTINEL_GROUP}/<area>/{k}", first[k])
            row["shape"] = f"({k == 'data' and 'T, 10' or 'T, 2'}, H, W) x {len(areas)} areas"
            row["stored_bytes"] = sum(int(sentinel[a["area"]][k].nbytes_stored()) for a in areas)
            row["bytes"] = sum(int(sentinel[a["area"]][k].nbytes) for a in areas)
            arrays.append(row)
    views = []
    vg = root.get(schema.VIEWS_GROUP)
    if vg is not None:
        current, replaced = lk.current_views(vg), lk.replaced_generations(vg)
        for name, g in sorted(vg.groups()):
            view = schema.view_name_of(name)[0]
            state = "replaced" if name in replaced else "current" if current.get(view) == name else "building"
            views.append({"name": name, "view": view, "generation": state, **g.attrs.asdict()})
    runs = attrs.get("runs", [])
    raw_bytes = sum(int(r.get("raw_bytes", 0)) for r in runs if r.get("command") == "ingest")
    stored_total = sum(a["stored_bytes"] for a in arrays if not a["path"].startswith(schema.SENTINEL_GROUP)) \
        + s2_stored
    return {
        "lake": lake, "schema_version": attrs["schema_version"], "patch_size": attrs["patch_size"],
        "patches": int(ok.sum()), "quarantined": int((status == schema.STATUS_QUARANTINED).sum()),
        "per_split": dict(sorted(per_split.items())), "per_domain": dict(sorted(per_domain.items())),
        "areas": len(areas), "sentinel_dates": int(sum(a["dates"] for a in areas)),
        "arrays": arrays, "stored_bytes": stored_total, "raw_bytes": raw_bytes,
        "compression_ratio": round(raw_bytes / stored_total, 3) if stored_total and raw_bytes else None,
        "runs": runs, "quarantine": attrs.get("quarantine", {}), "views": views,
        "band_stats": attrs.get("band_stats", {}),
        "latest_view": vg.attrs.get("latest") if vg is not None else None,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_report(r: dict) -> str:
    """Return the human-readable form of :func:`describe`."""
    lines = [f"lake {r['lake']}  (schema {r['schema_version']}, {r['patch_size']} px patches)",
             (f"patches: {r['patches']} ingested, {r['quarantined']} quarantined rows; "
              f"{r['areas']} Sentinel super-areas, {r['sentinel_dates']} area-dates"),
             "per split:  " + ", ".join(f"{k} {v}" for k, v in r["per_split"].items()),
             "per domain: " + ", ".join(f"{k} {v}" for k, v in r["per_domain"].items()),
             (f"stored {_mb(r['stored_bytes'])} for {_mb(r['raw_bytes'])} of raw files "
              f"(raw / lake = {r['compression_ratio']})"), "", "arrays:"]
    for a in r["arrays"]:
        ratio = a["bytes"] / a["stored_bytes"] if a["stored_bytes"] else float("nan")
        lines.append(f"  {a['path']:<26} {a['shape']!s:<28} {a['dtype']:<7} chunks {a['chunks']} "
                     f"shards {a['shards']} {a['codec']:<22} {_mb(a['stored_bytes'])} ({ratio:.2f}x)")
    lines += ["", "runs:"]
    for run in r["runs"]:
        what = ", ".join(f"{k} {run[k]}" for k in ("ingested", "quarantined", "patches") if k in run)
        src = run.get("raw") or run.get("view", "")
        lines.append(f"  {run['id']}: {run.get('status')}, {what}, {run.get('seconds', '?')} s  ({src})")
    if r["quarantine"]:
        lines += ["", "quarantined patches:"]
        lines += [f"  {patch_name(k)}: {v}" for k, v in sorted(r["quarantine"].items(), key=lambda kv: int(kv[0]))]
    lines += ["", "views:" if r["views"] else "views: none (run `flair-lake filter`)"]
    for v in r["views"]:
        try:
            desc = FilterConfig.from_params(v.get("params", {})).describe()
        except UsageError:  # written by another flair-lake version: show what it recorded
            desc = f"parameters {v.get('params')}"
        latest = " (latest)" if v.get("view", v["name"]) == r.get("latest_view") and v.get("generation") == "current" \
            else ""
        generation = {"replaced": " (replaced by --overwrite: kept for the readers that opened it, then collected)",
                      "building": " (being rebuilt by --overwrite: becomes current when complete)"}.get(
                          v.get("generation"), "")
        lines.append(f"  {v['name']}{latest}{generation}: {desc}; "
                     f"{'complete' if v.get('complete') else 'INCOMPLETE'}")
        for line in report_lines(v.get("report", {})):
            lines.append(f"    {line}")
    return "\n".join(lines)


def report_lines(report: dict) -> list[str]:
    """Return the human form of a view report."""
    if not report:
        return []
    lines = ["dates kept / dropped per domain: " + ", ".join(
        f"{d} {v['kept']}/{v['dropped']}" for d, v in report["per_domain"].items())]
    if "clear_month_histogram" in report:
        lines.append("patches by number of months with a clear date (0..12): "
                     + " ".join(str(x) for x in report["clear_month_histogram"]))
    none = report["no_clear_date"]
    lines.append(f"patches with no clear date: {len(none)}"
                 + (f" ({', '.join(patch_name(i) for i in none[:10])}{', ...' if len(none) > 10 else ''})"
                    if none else ""))
    return lines
