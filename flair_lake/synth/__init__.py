"""A learnable synthetic FLAIR #2 world, written in the exact raw layout of the real dataset.

There is no real FLAIR data on our machines, so tests, demos and benchmarks run on this generator. It writes
the published tree (docs/raw-format.md): 5-band uint8 aerial GeoTIFFs and 1-band label GeoTIFFs in
EPSG:2154, per zone a Sentinel-2 super-area (``_data.npy`` (T,10,H,W) uint16, ``_masks.npy`` (T,2,H,W) uint8
0-100 with channel 0 = snow and channel 1 = cloud, ``_products.txt`` with one L2A product name per line), the
centroids JSON and the aerial metadata JSON with the real schema.

The world
---------
Each zone is a grid of adjacent 102.4 m patches laid over a landscape defined as a function of Lambert-93
coordinates, so the aerial patches, their labels and the 10 m Sentinel pixels all see the same ground:

* **Parcels.** A rotated grid of fields (30-90 m) whose land use is drawn per zone from a domain-specific mix:
  agricultural land, herbaceous vegetation, plowed land, bare soil, vineyards (row texture), coniferous,
  deciduous and mixed forest, brushwood, clear cuts, greenhouses and 'other'. Hedges (brushwood) line the
  parcels.
* **Roads** (impervious surface) follow every few parcel boundaries; a meandering **river** (water) crosses
  some zones; a **village** disc holds buildings on a jittered sub-grid, gardens (pervious surface), yards
  (impervious) and a few swimming pools. Raw codes above 13 (pool, clear cut, mixed, greenhouse, other)
  appear, as in the real masks.
* **Aerial image.** Each class has its own R, G, B, NIR colour, texture scale and strength, and height
  (band 5, nDSM at 0.2 m per digital number: buildings and trees stand out). *Agricultural land and
  herbaceous vegetation are rendered identically*: in the aerial image they cannot be told apart.
* **Sentinel-2.** Every 10 m pixel mixes the spectra of the classes under it (4x4 sub-samples). Each class
  has a yearly vegetation profile (the paper's Figure 2): crops green up in spring and are harvested in July,
  grassland stays green, deciduous trees lose their leaves, conifers do not, plowed land stays bare. The pair
  above therefore differs only through time, so a model that uses the time series must beat one that does not.
* **Clouds and snow.** Most dates are clear; some carry cloud blobs, some are fully cloudy, and winter dates in
  high domains carry snow (with pixels flagged both snow and cloud, as Sen2Cor does). Cloudy and snowy pixels
  are brightened in the reflectance too. In the first zone of the first domain a cloud sits over one patch on
  every date: that patch has no clear date at all. The first zone of every domain has the tightest legal
  super-area: its corner patches' 40x40 windows touch the area's edge.
* **Domain shift.** Each departement has its own colour gain and offset, land-use mix, altitude, phenology
  shift of a few days, flight date and camera.

A smaller ``patch_size`` keeps the 102.4 m footprint with coarser pixels, so the Sentinel geometry (the 10x10
centre of the 40x40 window covers the patch) stays valid. Every zone draws from its own seeded generator:
a second run with the same seed writes byte-identical files.

The package: :mod:`~flair_lake.synth.world` plans the zones and draws their landscapes,
:mod:`~flair_lake.synth.aerial` renders the aerial images, :mod:`~flair_lake.synth.sentinel` the Sentinel-2
series with their phenology, clouds and snow, and :mod:`~flair_lake.synth.tree` writes the files and the JSONs.
"""

from __future__ import annotations

from flair_lake.synth.sentinel import class_spectra
from flair_lake.synth.tree import synthesize

__all__ = ["class_spectra", "synthesize"]
