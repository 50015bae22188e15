"""Read real hyperspectral scenes: ENVI (.hdr + raw, via `spectral`), GeoTIFF band stacks (`rasterio`),
MATLAB .mat files (`scipy.io`; v7.3 files are HDF5 and go through `h5py`) and the package's own HDF5 cubes.

Every reader gives a `Scene`: its size (rows, cols, bands), the band centres in nm when the file names them,
the no-data value, and `read(rows, cols, bands)` returning an (h, w, len(bands)) float32 window in the
file's own units (after an ENVI `reflectance scale factor`). ENVI and GeoTIFF windows are read from disk on
demand, so a scene larger than memory can be tiled; .mat files are read whole (MATLAB has no windowed read).

Problems are `DataError`s naming the file and the record at fault (a header field, a variable, a band).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from common.errors import DataError
from spectral_mae.cubes import CUBE_KEY

ENVI_SUFFIXES = (".hdr",)
GEOTIFF_SUFFIXES = (".tif", ".tiff")
MAT_SUFFIXES = (".mat",)
CUBE_SUFFIXES = (".h5", ".hdf5")
SUPPORTED = ENVI_SUFFIXES + GEOTIFF_SUFFIXES + MAT_SUFFIXES + CUBE_SUFFIXES
# Wavelength units ENVI headers use, as factors to nm.
TO_NM = {"nm": 1.0, "nanometers": 1.0, "um": 1e3, "micrometers": 1e3, "microns": 1e3, "mm": 1e6}


@dataclass
class Scene:
    """One hyperspectral image. Subclasses implement `_read`; `read` checks the window and casts to float32."""

    path: Path
    rows: int
    cols: int
    bands: int
    dtype: np.dtype
    wavelengths_nm: np.ndarray | None = None  # (bands,) band centres, when the file names them
    nodata: float | None = None  # value marking pixels without data (besides NaN)
    units: str = "file units"  # what one unit of the values is, for labelling metrics
    extra: dict = field(default_factory=dict)  # format-specific metadata kept in the outputs

    @property
    def name(self) -> str:
        return self.path.stem

    def read(self, rows: slice, cols: slice, bands: Sequence[int]) -> np.ndarray:
        """(h, w, len(bands)) float32 window in physical units; no-data pixels become NaN."""
        window = np.asarray(self._read(rows, cols, list(bands)), dtype=np.float32)
        if self.nodata is not None and np.isfinite(self.nodata):
            window[window == np.float32(self.nodata)] = np.nan
        return window

    def read_all(self, bands: Sequence[int]) -> np.ndarray:
        return self.read(slice(0, self.rows), slice(0, self.cols), bands)

    def _read(self, rows: slice, cols: slice, bands: list[int]) -> np.ndarray:
        raise NotImplementedError


def check_numeric(path: Path, dtype: np.dtype, record: str) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(
            f"{path.name}: {record} has data type {dtype}, not a real number type (integer or float); "
            "complex or boolean scenes cannot be used."
        )


# -- ENVI --------------------------------------------------------------------------------------------------


class EnviScene(Scene):
    def __init__(self, path: Path):
        import spectral

        try:
            image = spectral.open_image(str(path))
        except Exception as exc:  # spectral raises several types for a bad header or a missing data file
            raise DataError(
                f"{path.name}: not a readable ENVI header ({type(exc).__name__}: {exc})."
            ) from exc
        meta = image.metadata
        scale = _float_or_none(path, meta, "reflectance scale factor")
        nodata = _float_or_none(path, meta, "data ignore value")
        data_file = Path(image.filename)
        expected = int(image.offset) + image.nrows * image.ncols * image.nbands * image.sample_size
        actual = os.path.getsize(data_file)
        if actual < expected:
            per_band = image.nrows * image.ncols * image.sample_size
            raise DataError(
                f"{path.name}: 'lines = {image.nrows}, samples = {image.ncols}, bands = {image.nbands}' of "
                f"{np.dtype(image.dtype).name} need {expected} bytes, but the data file {data_file.name} holds "
                f"{actual} ({(actual - int(image.offset)) / per_band:.2f} bands' worth): it is truncated or "
                "the header does not describe it."
            )
        check_numeric(path, np.dtype(image.dtype), "'data type'")
        super().__init__(
            path,
            image.nrows,
            image.ncols,
            image.nbands,
            np.dtype(image.dtype),
            wavelengths_nm=_envi_wavelengths(path, meta, image.nbands),
            # spectral divides what it reads by the scale factor, so the no-data value is compared scaled too
            nodata=None if nodata is None else nodata / (scale or 1.0),
            units="reflectance" if scale else "file units",
            extra={"interleave": meta.get("interleave", ""), "data_file": data_file.name},
        )
        self._image = image

    def _read(self, rows, cols, bands):
        return self._image.read_subregion((rows.start, rows.stop), (cols.start, cols.stop), bands)


def _float_or_none(path: Path, meta: dict, key: str) -> float | None:
    if key not in meta:
        return None
    try:
        return float(meta[key])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path.name}: '{key} = {meta[key]}' is not a number.") from exc


def _envi_wavelengths(path: Path, meta: dict, bands: int) -> np.ndarray | None:
    if "wavelength" not in meta:
        return None
    try:
        values = np.asarray([float(v) for v in meta["wavelength"]])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path.name}: 'wavelength = {{...}}' holds a value that is not a number.") from exc
    if len(values) != bands:
        raise DataError(f"{path.name}: 'wavelength' lists {len(values)} values but 'bands = {bands}'.")
    units = str(meta.get("wavelength units", "nm")).strip().lower()
    if units not in TO_NM:
        if units in ("unknown", "index", ""):
            return None
        raise DataError(f"{path.name}: 'wavelength units = {units}' is not one of {sorted(TO_NM)}.")
    return values * TO_NM[units]


# -- GeoTIFF ------------------------------------------------------------------------------------------------


class GeoTiffScene(Scene):
    """A band stack: GDAL's band axis (1..count) is the spectral axis."""

    def __init__(self, path: Path):
        import rasterio

        try:
            dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"{path.name}: not a readable GeoTIFF ({exc}).") from exc
        dtype = np.dtype(dataset.dtypes[0])
        check_numeric(path, dtype, "band 1")
        super().__init__(
            path,
            dataset.height,
            dataset.width,
            dataset.count,
            dtype,
            wavelengths_nm=_geotiff_wavelengths(dataset),
            nodata=dataset.nodata,
            extra={"crs": str(dataset.crs) if dataset.crs else "", "transform": list(dataset.transform)[:6]},
        )
        self._dataset = dataset

    def _read(self, rows, cols, bands):
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        stack = self._dataset.read([b + 1 for b in bands], window=window)  # (bands, h, w); GDAL counts from 1
        return np.moveaxis(stack, 0, -1)


def _geotiff_wavelengths(dataset) -> np.ndarray | None:
    """Band centres from a per-band `wavelength` tag (GDAL's ENVI convention) or a description naming nm."""
    values = []
    for band in range(1, dataset.count + 1):
        tag = dataset.tags(band).get("wavelength")
        description = dataset.descriptions[band - 1] or ""
        match = re.search(r"([0-9]+(?:\.[0-9]+)?)\s*nm", description)
        if tag is not None:
            try:
                values.append(float(tag))
            except ValueError:
                return None
        elif match:
            values.append(float(match.group(1)))
        else:
            return None
    return np.asarray(values)


# -- MATLAB and in-memory arrays -----------------------------------------------------------------------------


class ArrayScene(Scene):
    """A scene already in memory as (rows, cols, bands)."""

    def __init__(self, path: Path, array: np.ndarray, **kwargs):
        check_numeric(path, array.dtype, kwargs.pop("record", "the array"))
        super().__init__(path, *array.shape, array.dtype, **kwargs)
        self._array = array

    def _read(self, rows, cols, bands):
        return self._array[rows, cols][:, :, bands]


def read_mat_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every numeric variable of a .mat file; v7.3 files (HDF5) through h5py, older ones through scipy.io.

    MATLAB writes arrays column-major, so h5py sees a MATLAB (H, W, B) array as (B, W, H): transposed back here.
    """
    if h5py.is_hdf5(path):
        arrays = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    arrays.__setitem__(name, np.asarray(obj[()]).T)
                    if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iuf" and not name.startswith("#")
                    else None
                )
            )
        return arrays
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError / TypeError / MatReadError for damaged files
        raise DataError(f"{path.name}: not a readable MATLAB file ({type(exc).__name__}: {exc}).") from exc
    return {
        k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray) and v.size
    }


def pick_variable(path: Path, arrays: dict[str, np.ndarray], ndim: int, variable: str | None, what: str):
    """The variable named `variable`, or the only `ndim`-D one; DataError listing the candidates otherwise."""
    shapes = ", ".join(f"'{k}' {v.shape}" for k, v in arrays.items()) or "none"
    if variable is not None:
        if variable not in arrays:
            raise DataError(f"{path.name}: no variable '{variable}' (variables: {shapes}).")
        if arrays[variable].ndim != ndim:
            raise DataError(
                f"{path.name}: variable '{variable}' has shape {arrays[variable].shape}; a {what} is {ndim}-D."
            )
        return variable, arrays[variable]
    candidates = [k for k, v in arrays.items() if v.ndim == ndim]
    if len(candidates) != 1:
        reason = "no" if not candidates else "several"
        raise DataError(
            f"{path.name}: {reason} {ndim}-D variable{'s' if candidates else ''} to use as the {what} "
            f"(variables: {shapes}); name one with --variable."
        )
    return candidates[0], arrays[candidates[0]]


def open_mat(path: Path, variable: str | None) -> ArrayScene:
    name, array = pick_variable(path, read_mat_arrays(path), 3, variable, "scene (rows, cols, bands)")
    return ArrayScene(path, array, record=f"variable '{name}'", extra={"variable": name})


def open_cube_file(path: Path) -> ArrayScene:
    """The package's own HDF5 cube (bands, H, W) as a scene."""
    with h5py.File(path, "r") as f:
        if CUBE_KEY not in f:
            raise DataError(f"{path.name}: no '{CUBE_KEY}' dataset (keys: {list(f.keys())}).")
        cube = np.asarray(f[CUBE_KEY][()])
        wavelengths = f.attrs.get("wavelengths_nm")
        units = f.attrs.get("units")
    if cube.ndim != 3:
        raise DataError(f"{path.name}: '{CUBE_KEY}' has shape {cube.shape}, expected (bands, H, W).")
    return ArrayScene(
        path,
        np.moveaxis(cube, 0, -1),
        record=f"'{CUBE_KEY}'",
        wavelengths_nm=None if wavelengths is None else np.asarray(wavelengths, dtype=float),
        units=str(units) if units is not None else "file units",
        # a cube of the training format holds exactly the bands a model reads: no band selection again
        extra={"prepared_cube": True},
    )


def open_scene(path: str | Path, variable: str | None = None) -> Scene:
    """The scene in `path`, by its suffix (an ENVI scene is opened by its .hdr)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Scene {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in ENVI_SUFFIXES:
        return EnviScene(path)
    if suffix in GEOTIFF_SUFFIXES:
        return GeoTiffScene(path)
    if suffix in MAT_SUFFIXES:
        return open_mat(path, variable)
    if suffix in CUBE_SUFFIXES:
        return open_cube_file(path)
    hint = " (open an ENVI scene by its .hdr file)" if path.with_suffix(".hdr").is_file() else ""
    raise DataError(f"{path.name}: unknown scene format '{suffix}'{hint}; supported: {', '.join(SUPPORTED)}.")


def open_labels(path: str | Path, variable: str | None, shape: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) integer label map (0 = unlabelled in the classic benchmarks) from a .mat variable, a
    one-band GeoTIFF or a one-band ENVI image; it must cover the scene pixel for pixel."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Label file {path} does not exist.")
    if path.suffix.lower() in MAT_SUFFIXES:
        _, labels = pick_variable(path, read_mat_arrays(path), 2, variable, "label map (rows, cols)")
    else:
        scene = open_scene(path)
        if scene.bands != 1:
            raise DataError(f"{path.name}: a label image has one band, this one has {scene.bands}.")
        labels = scene.read_all([0])[:, :, 0]
    if labels.shape != shape:
        raise DataError(
            f"{path.name}: labels are {labels.shape[0]}x{labels.shape[1]}, the scene {shape[0]}x{shape[1]}."
        )
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
        raise DataError(f"{path.name}: labels must be whole numbers (class ids).")
    return labels.astype(np.int32)
