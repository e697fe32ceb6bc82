"""flair-lake: FLAIR #2 into a chunked Zarr lake, streamed to the U-T&T trainer."""

__version__ = "0.1.0"

__all__ = ["open_lake"]


def __getattr__(name: str):
    """Return ``open_lake`` (:func:`flair_lake.xr.open_lake`) on first use, so ``import flair_lake`` stays light."""
    if name == "open_lake":
        from flair_lake.xr import open_lake

        return open_lake
    raise AttributeError(f"module 'flair_lake' has no attribute {name!r}")
