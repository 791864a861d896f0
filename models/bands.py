"""Sentinel-2 band names: one spelling for every band list (``B1``, ``b01``, ``B8a`` -> ``B01``, ``B01``, ``B8A``)."""
from __future__ import annotations

import re


def s2_name(band: str) -> str | None:
    """Canonical Sentinel-2 band name (``B1``, ``b01``, ``B8a`` -> ``B01``, ``B01``, ``B8A``); None if not one."""
    m = re.fullmatch(r"[Bb]0?(\d{1,2})([Aa]?)", band.strip())
    if not m or not 1 <= int(m.group(1)) <= 12 or (m.group(2) and m.group(1) != "8"):
        return None
    return f"B{int(m.group(1)):02d}" if not m.group(2) else "B8A"
