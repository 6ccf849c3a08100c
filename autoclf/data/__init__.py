"""Data: index the images, assign folds, decode once into a shared cache."""

from autoclf.data.cache import BadImagesError, ImageCache, build_cache
from autoclf.data.folds import assign_folds
from autoclf.data.images import load_rgb
from autoclf.data.index import DataIndex, build_index, load_index, save_index

__all__ = [
    "BadImagesError",
    "DataIndex",
    "ImageCache",
    "assign_folds",
    "build_cache",
    "build_index",
    "load_index",
    "load_rgb",
    "save_index",
]
