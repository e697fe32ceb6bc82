"""What a map leaves on disk: block files while it runs, then Cloud-Optimized GeoTIFFs, QGIS styles and a VRT.

- ``<name>.tif``: classes 0..12 (uint8, 255 = no data), LZW, 512 px tiles, internal overviews by mode, the
  official colour table embedded and the class names in the metadata (``CLASS_NAMES``, JSON).
- ``<name>_prob.tif`` (``--probabilities``): 13 class probabilities and the confidence (the largest), uint8
  scaled to 0..255, averaged overviews; 0 in every band where the map has no data.
- ``<name>.qml``: the QGIS style of the class map (QGIS loads it with the file); ``index.vrt``: every map of a
  run in one virtual mosaic, styled with the same colour table.

Blocks are written as ``<key>.tif.partial`` and renamed when complete: a block file that exists is finished.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from flair_lake import schema
from flair_lake.maps.grid import Block, PixelGrid
from flair_lake.maps.infer import NODATA, Rows

COG_BLOCK = 512
QML_NAME = "flair-classes.qml"


def class_colours() -> dict[int, tuple[int, int, int, int]]:
    """Return the map's colour table: class 0..12 -> RGBA (the official FLAIR colours; 'other' black)."""
    hexes = [schema.RAW_CLASSES[c][1] for c in range(1, schema.NUM_CLASSES)] + [schema.RAW_CLASSES[19][1]]
    return {i: (int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16), 255) for i, h in enumerate(hexes)}


def class_metadata() -> dict[str, str]:
    """Return the tags written into every class map: the class names and what the values mean."""
    return {"CLASS_NAMES": json.dumps({str(i): n for i, n in enumerate(schema.CLASS_NAMES)}),
            "NODATA_MEANING": "255: no aerial data under this pixel",
            "PRODUCER": "flair-lake map"}


def block_profile(grid: PixelGrid, block: Block, bands: int) -> dict:
    """Return the rasterio profile of a block file."""
    from rasterio.crs import CRS

    return {"driver": "GTiff", "width": block.c1 - block.c0, "height": block.r1 - block.r0, "count": bands,
            "dtype": "uint8", "compress": "lzw", "crs": CRS.from_user_input(grid.crs) if grid.crs else None,
            "transform": grid.transform @ grid.transform.translation(block.c0, block.r0)}


class BlockWriter:
    """Write one block's rows as they come, into ``<key>.tif.partial``; :meth:`close` renames it finished."""

    def __init__(self, folder: Path, grid: PixelGrid, block: Block, probabilities: bool) -> None:
        import rasterio

        self.final = folder / f"{block.key}.tif"
        self.partial = folder / f"{block.key}.tif.partial"
        self.width = block.c1 - block.c0
        self.bands = 1 + (schema.NUM_CLASSES + 1 if probabilities else 0)
        self.ds = rasterio.open(self.partial, "w", **block_profile(grid, block, self.bands))

    def __call__(self, rows: Rows) -> None:
        from rasterio.windows import Window

        h = rows.classes.shape[0]
        win = Window(0, rows.row, self.width, h)
        self.ds.write(rows.classes, 1, window=win)
        if rows.probabilities is not None:
            self.ds.write(rows.probabilities, list(range(2, 2 + schema.NUM_CLASSES)), window=win)
            self.ds.write(rows.confidence, self.bands, window=win)

    def close(self) -> None:
        self.ds.close()
        os.replace(self.partial, self.final)

    def abort(self) -> None:
        self.ds.close()
        self.partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class VrtSource:
    """One raster placed in a VRT: its file, its band and where it goes (pixel offsets, may be fractional)."""

    path: Path
    band: int
    x: float
    y: float
    width: int
    height: int


def write_vrt(path: Path, grid: PixelGrid, bands: list[list[VrtSource]], *, nodata: int | None,
              descriptions: list[str], colours: dict | None = None) -> None:
    """Write a VRT of ``grid`` whose band k mosaics ``bands[k]`` (paths relative to the VRT when below it)."""
    from rasterio.crs import CRS

    srs = escape(CRS.from_user_input(grid.crs).to_wkt()) if grid.crs else ""
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
             f"  <SRS>{srs}</SRS>" if srs else "",
             f"  <GeoTransform>{grid.west!r}, {grid.res!r}, 0, {grid.north!r}, 0, {-grid.res!r}</GeoTransform>"]
    for k, sources in enumerate(bands):
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{k + 1}">')
        lines.append(f"    <Description>{escape(descriptions[k])}</Description>")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata}</NoDataValue>")
        if colours and k == 0:
            lines.append("    <ColorInterp>Palette</ColorInterp>")
            lines.append("    <ColorTable>")
            for v in range(256):
                r, g, b, a = colours.get(v, (0, 0, 0, 0))
                lines.append(f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>')
            lines.append("    </ColorTable>")
        for s in sources:
            rel = os.path.relpath(s.path, path.parent)
            lines += ["    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
                      f"      <SourceBand>{s.band}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>',
                      f'      <DstRect xOff="{s.x!r}" yOff="{s.y!r}" xSize="{s.width}" ySize="{s.height}"/>',
                      "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.write_text("\n".join(x for x in lines if x) + "\n")
    os.replace(tmp, path)


def assemble(folder: Path, grid: PixelGrid, blocks: list[Block], out: Path, name: str, *,
             probabilities: bool) -> list[Path]:
    """Mosaic a map's finished block files into its COG(s) and QGIS style; return the files written.

    Each COG is written aside and renamed, so a map file that exists is complete.
    """
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    def sources(band: int) -> list[VrtSource]:
        return [VrtSource(folder / f"{b.key}.tif", band, b.c0, b.r0, b.c1 - b.c0, b.r1 - b.r0) for b in blocks]

    profile = {**cog_profiles.get("lzw"), "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK}
    written = []
    jobs = [(f"{name}.tif", [1], ["land-cover class (FLAIR #2, 13 classes)"], NODATA, "mode", True)]
    if probabilities:
        jobs.append((f"{name}_prob.tif", list(range(2, 3 + schema.NUM_CLASSES)),
                     [f"probability: {n}" for n in schema.CLASS_NAMES] + ["confidence"], None, "average", False))
    for file, band_ids, descriptions, nodata, resampling, styled in jobs:
        vrt = folder / f"{Path(file).stem}.vrt"
        write_vrt(vrt, grid, [sources(b) for b in band_ids], nodata=nodata, descriptions=descriptions,
                  colours=class_colours() if styled else None)
        # written in the job folder (rio-cogeo's temporary file goes beside it: a kill leaves both there, where
        # the next run clears them), then renamed into OUT
        tmp = folder / f"{file}.partial"
        cog_translate(str(vrt), str(tmp), dict(profile), nodata=nodata, overview_resampling=resampling,
                      resampling="nearest", in_memory=False, quiet=True, allow_intermediate_compression=True,
                      colormap=class_colours() if styled else None,
                      additional_cog_metadata=class_metadata() if styled else {"PRODUCER": "flair-lake map"})
        os.replace(tmp, out / file)
        written.append(out / file)
    qml = out / f"{name}.qml"
    shutil.copyfile(write_qml(out / QML_NAME), qml)
    written.append(qml)
    return written


def write_qml(path: Path) -> Path:
    """Write the QGIS style of a class map (paletted, official colours and names) and return its path."""
    entries = "\n".join(f'        <paletteEntry value="{i}" color="#{r:02x}{g:02x}{b:02x}" alpha="{a}" '
                        f'label="{escape(schema.CLASS_NAMES[i], {chr(34): "&quot;"})}"/>'
                        for i, (r, g, b, a) in class_colours().items())
    text = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>
    <rasterresampler maxOversampling="2" zoomedOutResampler="nearest"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def write_index(path: Path, maps: list[tuple[Path, PixelGrid]]) -> list[str]:
    """Write ``index.vrt`` mosaicking the class maps of a run; return warnings for maps that cannot join it
    (another CRS or pixel size than the first map)."""
    if not maps:
        return []
    first = maps[0][1]
    same = [(p, g) for p, g in maps if g.crs == first.crs and np.isclose(g.res, first.res, rtol=1e-9)]
    warnings = [f"{p.name} is not in index.vrt: its CRS or pixel size differs from {maps[0][0].name}'s"
                for p, g in maps if (p, g) not in same]
    west = min(g.west for _, g in same)
    north = max(g.north for _, g in same)
    east = max(g.west + g.width * g.res for _, g in same)
    south = min(g.north - g.height * g.res for _, g in same)
    res = first.res
    union = PixelGrid(west, north, res, int(np.ceil((north - south) / res - 1e-6)),
                      int(np.ceil((east - west) / res - 1e-6)), first.crs)
    srcs = [VrtSource(p, 1, (g.west - west) / res, (north - g.north) / res, g.width, g.height) for p, g in same]
    write_vrt(path, union, [srcs], nodata=NODATA, descriptions=["land-cover class (FLAIR #2, 13 classes)"],
              colours=class_colours())
    return warnings
