"""flair-lake: FLAIR #2 into a chunked Zarr lake, streamed to the U-T&T trainer."""

__version__ = "0.1.0"
