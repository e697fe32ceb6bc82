"""Reading the raw FLAIR #2 layout: names, discovery, GeoTIFF and Sentinel readers, metadata."""
