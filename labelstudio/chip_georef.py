"""Where a chip lies in its scene, as it travels in Label Studio task data (`task["data"]["chip"]`).

Written by `labelstudio.scene_tasks` for every (chip, expression) task and read back by `labelstudio.stitch`.
The task itself carries everything stitching needs, so an export of the project (JSON file or API) is enough:
no side file has to be kept next to it, and the backend predicts these tasks like any other (it only reads
the image URL and the expression).

    "chip": {
        "scene": "S2A_T32TQM_2024",          # scene id (the TIFF's file stem unless given): groups the chips
        "window": [row0, col0, height, width],# the chip's pixels in the scene (full resolution)
        "scene_size": [height, width],        # the scene's size in pixels
        "grid": [chip, overlap],              # how the scene was cut (to tell which windows an export lacks)
        "transform": [a, b, c, d, e, f],      # the chip's affine (pixel corner -> CRS), rasterio/affine order
        "scene_transform": [a, b, c, d, e, f],# the scene's, exactly as read from the GeoTIFF
        "crs": "EPSG:32632",                  # or a user-defined CRS's citation, or null
        "geokeys": [[...], [...] | null, "..." | null] | null,   # raw GeoKeys: user-defined CRSs survive
        "bands": [4, 3, 2],                   # 1-based bands shown as R, G, B
        "stretch": {"lo": [...], "hi": [...]} | null   # the scene-wide 8-bit stretch (null: 8-bit kept)
    }

The scene's transform is stored as read (not derived back from the chip's), so that the stitched mask's
georeference is bit-identical to the scene's; JSON floats round-trip exactly. Transforms and CRS are null for a
TIFF without a georeference (masks are then written without one, polygons in pixel coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from formats.georef import GeoReference
from formats.raster_reader import Window

DATA_KEY = "chip"


class ChipDataError(ValueError):
    """A task's `chip` data is missing or malformed (message meant for the user)."""


@dataclass(frozen=True)
class ChipGeoref:
    scene: str
    window: Window  # (row0, col0, height, width)
    scene_size: Tuple[int, int]  # (height, width)
    grid: Tuple[int, int]  # (chip, overlap)
    scene_georef: Optional[GeoReference] = None
    bands: Tuple[int, ...] = ()
    stretch: Optional[Dict[str, list]] = None

    @property
    def georef(self) -> Optional[GeoReference]:
        """The chip's own georeference (its top-left pixel's corner as origin)."""
        if self.scene_georef is None:
            return None
        return self.scene_georef.window(self.window[0], self.window[1])

    def to_data(self) -> Dict[str, Any]:
        g = self.scene_georef
        chip = self.georef
        return {
            "scene": self.scene,
            "window": [int(v) for v in self.window],
            "scene_size": [int(v) for v in self.scene_size],
            "grid": [int(v) for v in self.grid],
            "transform": list(chip.transform) if chip else None,
            "scene_transform": list(g.transform) if g else None,
            "crs": g.crs if g else None,
            "geokeys": ([list(g.geokeys[0]), list(g.geokeys[1]) if g.geokeys[1] is not None else None,
                         g.geokeys[2]] if g is not None and g.geokeys is not None else None),
            "bands": [int(b) for b in self.bands],
            "stretch": self.stretch,
        }

    @classmethod
    def from_data(cls, data: Any) -> "ChipGeoref":
        """Parse `task["data"]["chip"]`; raises ChipDataError saying what is wrong."""
        if not isinstance(data, dict):
            raise ChipDataError(f"task data has no {DATA_KEY!r} object (not a chip made by `refseg tasks`)")
        scene = data.get("scene")
        if not isinstance(scene, str) or not scene.strip():
            raise ChipDataError(f"{DATA_KEY}.scene must be a non-empty string, got {scene!r}")
        window = _ints(data.get("window"), 4, "window")
        size = _ints(data.get("scene_size"), 2, "scene_size")
        grid = _ints(data.get("grid"), 2, "grid") if data.get("grid") is not None else (0, 0)
        r0, c0, h, w = window
        if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > size[0] or c0 + w > size[1]:
            raise ChipDataError(f"{DATA_KEY}.window {list(window)} is not inside the scene of {size[0]}x{size[1]} px")
        georef = None
        transform = data.get("scene_transform")
        if transform is not None:
            georef = GeoReference(tuple(_floats(transform, 6, "scene_transform")), _crs(data.get("crs")),
                                  _geokeys(data.get("geokeys")))
        bands = tuple(_ints(data.get("bands") or [], None, "bands"))
        stretch = data.get("stretch") if isinstance(data.get("stretch"), dict) else None
        return cls(scene.strip(), window, size, grid, georef, bands, stretch)

    def scene_key(self) -> tuple:
        """What all chips of one scene must agree on (size and georeference)."""
        g = self.scene_georef
        return (self.scene_size, g.transform if g else None, g.crs if g else None, g.geokeys if g else None)


def _ints(value: Any, n: Optional[int], name: str) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ChipDataError(f"{DATA_KEY}.{name} must be a list of {n or 'some'} integers, got {value!r}")
    return tuple(int(v) for v in value)


def _floats(value: Any, n: int, name: str) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ChipDataError(f"{DATA_KEY}.{name} must be a list of {n} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _crs(value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ChipDataError(f"{DATA_KEY}.crs must be a string or null, got {value!r}")
    return value


def _geokeys(value: Any):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ChipDataError(f"{DATA_KEY}.geokeys must be [directory, doubles|null, ascii|null], got {value!r}")
    directory, doubles, ascii_params = value
    d = _ints(directory, None, "geokeys[0]")
    dv = _floats(doubles, len(doubles), "geokeys[1]") if isinstance(doubles, (list, tuple)) else None
    if doubles is not None and dv is None:
        raise ChipDataError(f"{DATA_KEY}.geokeys[1] must be a list of numbers or null")
    if ascii_params is not None and not isinstance(ascii_params, str):
        raise ChipDataError(f"{DATA_KEY}.geokeys[2] must be a string or null")
    return (d, dv, ascii_params)


def scene_georef_from(reader_georef: Optional[GeoReference]) -> Optional[GeoReference]:
    """The scene's georeference in the normalised form from_data gives back (tuples), so equality holds."""
    if reader_georef is None:
        return None
    keys = reader_georef.geokeys
    if keys is not None:
        keys = (tuple(int(v) for v in keys[0]), tuple(float(v) for v in keys[1]) if keys[1] is not None else None,
                keys[2])
    return GeoReference(tuple(float(v) for v in reader_georef.transform), reader_georef.crs, keys)


__all__: Sequence[str] = ("DATA_KEY", "ChipDataError", "ChipGeoref", "scene_georef_from")
