"""Maps of whole zones and rasters from a trained model (``flair-lake map``; docs/maps.md).

:mod:`~flair_lake.maps.grid` (pixel grid, windows, blending weights, job grid), :mod:`~flair_lake.maps.sources`
(a zone of a lake, or a raster), :mod:`~flair_lake.maps.infer` (the model over one block, blended),
:mod:`~flair_lake.maps.write` (block files, COGs, QGIS style, VRT) and :mod:`~flair_lake.maps.score` (a map
against the zone's labels). ``pipelines/maps.py`` runs them over many blocks, resumably, on Dask.
"""
