"""Data: index the images, assign folds, decode once into a shared cache."""

from autoclf.data.cache import BadImagesError, ImageCache, build_cache
from autoclf.data.duplicates import Duplicates, find_duplicates, fold_groups, perceptual_hashes
from autoclf.data.folds import assign_folds, check_splittable
from autoclf.data.images import load_rgb
from autoclf.data.index import DataIndex, build_index, load_index, save_index

__all__ = [
    "BadImagesError",
    "DataIndex",
    "Duplicates",
    "ImageCache",
    "assign_folds",
    "build_cache",
    "check_splittable",
    "build_index",
    "find_duplicates",
    "fold_groups",
    "load_index",
    "load_rgb",
    "perceptual_hashes",
    "save_index",
]
