"""Where a raster's pixels are: the affine transform and CRS of a GeoTIFF.

* `GeoReference(transform, crs, geokeys)`: the transform (rasterio/affine order), the CRS ("EPSG:<code>" or a
  user-defined CRS's citation) and the raw GeoKeys (copied verbatim into exported GeoTIFFs).
* `read_georeference(page)`: a tifffile page's ModelPixelScale + ModelTiepoint or ModelTransformation and its
  GeoKeys as a GeoReference (PixelIsPoint tie points moved to the pixel corner); None for a plain TIFF.
* `parse_geokeys`: the GeoKeyDirectory with its double and ASCII parameters as {key id: value}.
* The GeoTIFF 1.1 tag and key numbers (and GDAL_NODATA's tag) that the reader and the writer share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from formats.image_source import ImageLoadError

# GeoTIFF tags and keys (GeoTIFF 1.1 spec)
TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION = 33550, 33922, 34264
TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII, TAG_GDAL_NODATA = 34735, 34736, 34737, 42113
KEY_MODEL_TYPE, KEY_RASTER_TYPE, KEY_CITATION = 1024, 1025, 1026
KEY_GEOGRAPHIC_TYPE, KEY_GEOG_CITATION, KEY_PROJECTED_TYPE, KEY_PCS_CITATION = 2048, 2049, 3072, 3073
USER_DEFINED = 32767

Affine = Tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class GeoReference:
    """Where the pixels are: an affine transform and a CRS.

    transform: (a, b, c, d, e, f) in the order of rasterio/affine: for the pixel *corner* (col, row),
        x = a*col + b*row + c, y = d*col + e*row + f (GDAL geotransform (c, a, b, f, d, e)); north-up scenes have
        b = d = 0 and e < 0.
    crs: "EPSG:<code>" when the GeoKeys name one, else the citation text of a user-defined CRS, else None.
    geokeys: the raw GeoKeyDirectory / GeoDoubleParams / GeoAsciiParams tag values, copied verbatim into
        exported GeoTIFFs so that a user-defined CRS survives; None when unknown.
    """

    transform: Affine
    crs: Optional[str] = None
    geokeys: Optional[Tuple[Tuple[int, ...], Optional[Tuple[float, ...]], Optional[str]]] = None

    @property
    def epsg(self) -> Optional[int]:
        if self.crs and self.crs.upper().startswith("EPSG:"):
            try:
                return int(self.crs.split(":", 1)[1])
            except ValueError:
                return None
        return None

    def xy(self, col: Union[float, np.ndarray], row: Union[float, np.ndarray]):
        """CRS coordinates of pixel-grid points (corners at integers, centres at +0.5)."""
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f

    @property
    def pixel_area(self) -> float:
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)

    def window(self, row0: int, col0: int) -> "GeoReference":
        """The georeference of a sub-window whose top-left pixel is (row0, col0)."""
        a, b, c, d, e, f = self.transform
        x, y = self.xy(col0, row0)
        return GeoReference((a, b, float(x), d, e, float(y)), self.crs, self.geokeys)

    def scaled(self, factor_rows: float, factor_cols: float) -> "GeoReference":
        """The georeference of the same extent sampled with pixels factor x larger."""
        a, b, c, d, e, f = self.transform
        return GeoReference((a * factor_cols, b * factor_rows, c, d * factor_cols, e * factor_rows, f),
                            self.crs, self.geokeys)


def parse_geokeys(directory: Sequence[int], doubles: Optional[Sequence[float]] = None,
                  ascii_params: Optional[str] = None) -> Dict[int, Any]:
    """GeoKeyDirectoryTag values -> {key id: value} (shorts inline, doubles and ASCII from the param tags)."""
    d = [int(v) for v in directory]
    if len(d) < 4:
        raise ImageLoadError("GeoKeyDirectoryTag is too short")
    out: Dict[int, Any] = {}
    n = d[3]
    for k in range(n):
        entry = d[4 + 4 * k: 8 + 4 * k]
        if len(entry) < 4:
            break
        key, loc, count, off = entry
        if loc == 0:
            out[key] = off
        elif loc == TAG_GEO_DOUBLES and doubles is not None:
            vals = [float(v) for v in doubles[off: off + count]]
            out[key] = vals[0] if count == 1 else vals
        elif loc == TAG_GEO_ASCII and ascii_params is not None:
            out[key] = ascii_params[off: off + count].rstrip("|\x00")
        elif loc == TAG_GEOKEYS:
            out[key] = d[off: off + count]
    return out


def _crs_from_keys(keys: Dict[int, Any]) -> Optional[str]:
    for key in (KEY_PROJECTED_TYPE, KEY_GEOGRAPHIC_TYPE):
        v = keys.get(key)
        if isinstance(v, int) and 0 < v < USER_DEFINED:
            return f"EPSG:{v}"
    for key in (KEY_PCS_CITATION, KEY_CITATION, KEY_GEOG_CITATION):
        v = keys.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def read_georeference(page) -> Optional[GeoReference]:
    """The GeoReference of a tifffile page, None when it has no transform tags."""
    tags = page.tags
    keys_tag = tags.get(TAG_GEOKEYS)
    keys: Dict[int, Any] = {}
    raw = None
    if keys_tag is not None:
        doubles = tags.get(TAG_GEO_DOUBLES)
        ascii_tag = tags.get(TAG_GEO_ASCII)
        dvals = tuple(float(v) for v in doubles.value) if doubles is not None else None
        avals = ascii_tag.value if ascii_tag is not None else None
        if isinstance(avals, bytes):
            avals = avals.decode("latin-1")
        if isinstance(avals, str) and not avals.endswith("|"):
            avals = avals + "|"  # tifffile strips the trailing NUL; GeoTIFF ASCII params end with '|'
        keys = parse_geokeys(keys_tag.value, dvals, avals)
        raw = (tuple(int(v) for v in keys_tag.value), dvals, avals)
    if TAG_TRANSFORMATION in tags:
        m = [float(v) for v in tags[TAG_TRANSFORMATION].value]
        transform: Affine = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif TAG_PIXEL_SCALE in tags and TAG_TIEPOINT in tags:
        sx, sy = (float(v) for v in tags[TAG_PIXEL_SCALE].value[:2])
        tp = [float(v) for v in tags[TAG_TIEPOINT].value[:6]]
        i, j, x, y = tp[0], tp[1], tp[3], tp[4]
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    else:
        return None
    if keys.get(KEY_RASTER_TYPE) == 2:  # PixelIsPoint: the tie point is a pixel centre; move it to the corner
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    return GeoReference(tuple(float(v) for v in transform), _crs_from_keys(keys), raw)  # type: ignore[arg-type]
