"""Writing predictions where GIS tools and spreadsheets read them: crowns as GeoJSON, masks as GeoTIFF/PNG,
tree counts as CSV.

Crown polygons are traced from the stitched instance id map by `rasterio.features.shapes` through the
image's transform, so they are in the image's coordinate system: map coordinates of its CRS for a
georeferenced GeoTIFF (named in the file's "crs" member, which GDAL, QGIS and geopandas read), pixel
coordinates (x = column, y = row down from the top-left corner) otherwise, said in the file's
"coordinate_system" member. Masks of a TIFF input are GeoTIFFs with its transform and CRS; of a PNG/JPEG
input, PNGs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from PIL import Image
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from common.errors import DataError
from common.runs import atomic_writer

from .imagery import Imagery
from .tiled_inference import StitchedPrediction

PIXEL_COORDINATES = "pixel: x = column, y = row down from the top-left corner (the image has no georeference)"


def crs_name(image: Imagery) -> str | None:
    """The CRS as an OGC URN (EPSG code when there is one, WKT otherwise); None without a CRS."""
    if image.crs is None:
        return None
    epsg = image.crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else image.crs.to_wkt()


def crown_features(pred: StitchedPrediction, image: Imagery, class_names: list[str]) -> list[dict]:
    """One GeoJSON feature per tree (a Polygon, or a MultiPolygon when its pixels are not connected)."""
    parts: dict[int, list] = {}
    ids = pred.instances
    area = np.bincount(ids.ravel(), minlength=len(pred.trees) + 1)
    for geom, value in rasterio.features.shapes(ids, mask=ids > 0, connectivity=8, transform=image.transform):
        parts.setdefault(int(value), []).append(shape(geom))
    features = []
    for k, tree in enumerate(pred.trees, start=1):
        cx, cy = image.transform @ (tree.centre[0] + 0.5, tree.centre[1] + 0.5)  # pixel centre -> map
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(unary_union(parts[k])),
                "properties": {
                    "image": image.path.name,
                    "tree_id": k,
                    "class": class_names[tree.label],
                    "score": round(float(tree.score), 5),
                    "centre_x": float(cx),
                    "centre_y": float(cy),
                    "area_px": int(area[k]),
                },
            }
        )
    return features


def write_crowns(path: Path, features: list[dict], image: Imagery) -> None:
    collection: dict = {"type": "FeatureCollection", "name": image.path.stem}
    name = crs_name(image)
    if name:
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    else:
        collection["coordinate_system"] = PIXEL_COORDINATES
    collection["features"] = features
    with atomic_writer(path) as fh:
        fh.write(json.dumps(collection).encode())


def write_mask(path_stem: Path, array: np.ndarray, image: Imagery) -> Path:
    """A single-band mask beside the input's kind: GeoTIFF (input's transform and CRS) for a TIFF input,
    PNG otherwise. uint8 when the values fit, uint16 for instance ids of a crowded image."""
    dtype = np.uint8 if array.max(initial=0) < 256 else np.uint16
    if array.max(initial=0) >= 65536:
        dtype = np.uint32
    array = array.astype(dtype)
    if image.path.suffix.lower() in (".tif", ".tiff"):
        path = path_stem.with_suffix(".tif")
        profile = {
            "driver": "GTiff",
            "height": array.shape[0],
            "width": array.shape[1],
            "count": 1,
            "dtype": array.dtype.name,
            "compress": "deflate",
        }
        if image.georeferenced:
            profile.update(transform=image.transform, crs=image.crs)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array, 1)
        return path
    path = path_stem.with_suffix(".png")
    if dtype == np.uint32:  # PNG stops at 16 bits
        raise DataError(
            f"{image.path}: more than 65535 trees do not fit a PNG instance mask; convert the image to a "
            "GeoTIFF (its masks are then GeoTIFFs) or cut it in parts."
        )
    Image.fromarray(array).save(path)
    return path


def write_counts(path: Path, rows: list[dict]) -> None:
    """counts.csv: one row per image (image, width, height, crs, score_threshold, trees, trees_<class>...)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_writer(path) as fh:
        fh.write(buf.getvalue().encode())
