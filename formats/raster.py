"""A whole image loaded with where it is: `load_raster(path, bands, stretch)` -> `Raster`.

`Raster(pixels, georef, nodata_mask, ...)`: the 8-bit RGB pixels (after band selection and stretch) plus the
georeference (affine transform + CRS) and the nodata mask. (Geo)TIFF / COG sources go through `RasterReader`;
any other image loads through `load_image` with georef=None.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from formats.georef import Affine, GeoReference
from formats.image_source import ImageLoadError, is_tiff
from formats.images import load_image
from formats.raster_reader import RasterReader
from formats.stretch import Stretch, parse_bands


@dataclass
class Raster:
    """A loaded raster: 8-bit RGB pixels plus where they are.

    pixels: H x W x 3 uint8 (after band selection and stretch; nodata pixels are 0).
    georef: GeoReference, or None for a plain (non-geo) image.
    nodata_mask: H x W bool, True where the source had no data (None when the source declares none).
    bands: the 1-based band indices used; dtype: the source sample type; nodata: the declared nodata value.
    """

    pixels: np.ndarray
    georef: Optional[GeoReference] = None
    nodata_mask: Optional[np.ndarray] = None
    bands: Tuple[int, ...] = (1, 2, 3)
    dtype: str = "uint8"
    nodata: Optional[float] = None
    stretch: Optional[Stretch] = None

    @property
    def transform(self) -> Optional[Affine]:
        return self.georef.transform if self.georef else None

    @property
    def crs(self) -> Optional[str]:
        return self.georef.crs if self.georef else None


def load_raster(source: Union[str, Path, bytes], bands: Union[None, str, Sequence[int]] = None,
                stretch: Any = "auto") -> Raster:
    """Load a whole image with its georeference: `Raster(pixels HxWx3 uint8, georef, nodata_mask, ...)`.

    Args:
        source: a (Geo)TIFF / COG path or bytes; any other image (PNG, JPEG, ...) loads with georef=None.
        bands: 1-based band indices, "4,3,2" or [4, 3, 2] (3 bands -> RGB, 1 band -> grey); default 1,2,3 (or 1
            for images with fewer than 3 bands).
        stretch: "auto" (8-bit kept, otherwise per-band 2-98 % percentile stretch), "none", "minmax", or
            (lo, hi) percentiles. Statistics exclude nodata pixels.
    """
    band_list = parse_bands(bands)
    if not is_tiff(source):
        if band_list is not None and band_list not in ([1, 2, 3], [1]):
            raise ImageLoadError("band selection needs a (Geo)TIFF source")
        return Raster(load_image(source))
    with RasterReader(source) as reader:
        band_list = reader.check_bands(band_list)
        st = reader.stretch_params(band_list, stretch)
        pixels, nodata = reader.read_rgb(None, band_list, st)
        return Raster(np.ascontiguousarray(pixels), reader.georef, nodata, tuple(band_list), str(reader.dtype),
                      reader.nodata, st)
