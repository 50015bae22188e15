"""Reading aerial images of any size and format (GeoTIFF orthomosaics, PNG, JPEG) through rasterio.

An `Imagery` is an open image read window by window, so an orthomosaic larger than memory can be predicted
tile by tile. It keeps the image's georeference: `crs` (None for a plain PNG/JPEG) and `transform` (pixel
-> map coordinates; the identity when the image has none, so pixel coordinates come out unchanged).
Pixel values are scaled to float [0, 1] by the range of the image's data type (uint8 / uint16), the range
the model was trained on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from common.errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_SCALE = {"uint8": 255.0, "uint16": 65535.0}


class Imagery:
    """An open RGB(A) image. Use as a context manager; `read(y0, x0, h, w)` -> float32 (h, w, 3) in [0, 1],
    zero-padded where the window runs past the image edge."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with warnings.catch_warnings():  # a PNG has no georeference: that is expected, not a problem
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(self.path)
        except RasterioIOError as exc:
            raise DataError(f"{self.path}: cannot be read as an image ({exc}).") from None
        src = self._src
        if src.count < 3:
            self.close()
            raise DataError(
                f"{self.path}: has {src.count} band(s); cabruca needs an RGB image (bands 1-3 = red, green, "
                "blue; a 4th alpha band is ignored)."
            )
        dtype = src.dtypes[0]
        if dtype not in _SCALE and not dtype.startswith("float"):
            self.close()
            raise DataError(f"{self.path}: pixel type {dtype} is not supported (use uint8, uint16 or float).")
        self.scale = _SCALE.get(dtype, 1.0)  # float images are taken as already in [0, 1]
        self.height, self.width = src.height, src.width
        self.crs = src.crs  # None for images without a coordinate system
        self.georeferenced = src.crs is not None or src.transform != Affine.identity()
        self.transform = src.transform if self.georeferenced else Affine.identity()

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Window (y0, x0, h, w) -> float32 (h, w, 3) in [0, 1]; zeros past the image edge."""
        out = np.zeros((h, w, 3), np.float32)
        hh, ww = min(h, self.height - y0), min(w, self.width - x0)
        if hh > 0 and ww > 0:
            try:
                part = self._src.read((1, 2, 3), window=Window(x0, y0, ww, hh))  # (3, hh, ww)
            except RasterioIOError as exc:
                raise DataError(f"{self.path}: reading pixels at x={x0}, y={y0} failed ({exc}).") from None
            out[:hh, :ww] = np.moveaxis(part, 0, -1).astype(np.float32) / self.scale
        return out

    def read_all(self) -> np.ndarray:
        return self.read(0, 0, self.height, self.width)

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> Imagery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file of any band count, without reading its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.height, src.width
    except RasterioIOError as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}).") from None


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files and folders (their image files, sorted, not recursive) -> image paths; DataError for a path that
    does not exist, a file that is not an image, or an input that holds no image at all."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{item}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}).")
            found.append(item)
        else:
            raise DataError(f"--input {item}: no such file or folder.")
    if not found:
        raise DataError(
            f"--input {', '.join(map(str, inputs))}: holds no image ({', '.join(IMAGE_SUFFIXES)})."
        )
    stems = [p.stem for p in found]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise DataError(
            f"--input: several images are named {clash[0]!r} (the outputs are named after the image); rename "
            "one or predict them in separate runs."
        )
    return found


def read_rgb(path: str | Path) -> np.ndarray:
    """A whole training image -> float32 (H, W, 3) in [0, 1]: TIFFs through rasterio (uint16 and multiband
    orthomosaics), PNG/JPEG through Pillow (which also expands palette and grey images)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        with Imagery(path) as image:
            return image.read_all()
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255.0
