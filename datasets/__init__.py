"""Data layer: index (files, split, few-shot draw) -> reader (GDAL) -> transforms -> views."""
