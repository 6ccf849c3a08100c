"""autoclf: AutoML for image classification on Optuna, timm and albumentations."""

__version__ = "0.1.0"
