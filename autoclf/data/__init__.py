"""Data: index the images, assign folds, decode once into a shared cache.

Import what you need from its modules (``autoclf.data.index``, ``.cache``, …): this package
imports nothing, so that naming the built-in data sets does not load OpenCV or scikit-learn."""
