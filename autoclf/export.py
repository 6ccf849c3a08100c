"""``autoclf export``: a finalized ensemble as one ONNX graph that a service runs without autoclf.

The graph is :meth:`autoclf.predictor.Predictor.predict_pixels` written as one ``nn.Module``
and exported by torch's ``torch.export``-based ONNX exporter (``dynamo=True``, opset 18):

    pixels (N, S, S, 3) uint8 RGB  →  float, NCHW
      per member: resize to its input size (antialiased, as ``F.interpolate`` does it),
                  normalise with its backbone's mean and std,
                  its TTA views (flip: a reversed slice; zoom and shift: ``GridSample`` on a
                  constant grid), every one of its models (fold models or one full model),
                  softmax, mean over views, mean over models
      vote:       soft (weighted mean) or hard (weighted one-hot shares + 1e-6 × soft vote)
    →  probs (N, classes) float32

Opset 18: ``GridSample`` needs 16, ``Resize`` with ``antialias`` 18. The TorchScript exporter
(``dynamo=False``) has no antialiased resize, so it is not used.

Nothing is written before a check: onnxruntime's output on up to ``check_images`` of the study's
own images, from its image cache, is compared with ``Predictor(device="cpu").predict_pixels``
on the same rows; a largest absolute difference above the tolerance refuses the export and
names the image. Then ``model.onnx`` and ``model.json`` (what the graph expects and holds, and
how to turn a file into its input) are written atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import autoclf
from autoclf import atomic
from autoclf.data.images import DRAFT_FLOOR
from autoclf.errors import AutoclfError
from autoclf.inference import view_grid
from autoclf.models import interpolation, load_trained, normalization
from autoclf.predictor import Member, Predictor

FORMAT_VERSION = 1
OPSET = 18  # GridSample (TTA zoom and shift) needs 16; Resize with antialias needs 18
TOLERANCE = 1e-4  # largest absolute difference allowed between onnxruntime and autoclf
CHECK_IMAGES = 256
CHECK_BATCH = 32
INPUT, OUTPUT = "pixels", "probs"
ONNX_NAME, JSON_NAME = "model.onnx", "model.json"
HARD_TIE_SHARE = 1e-6  # autoclf.ensemble.hard_vote: the soft vote's share that breaks ties
EXTRA = "pip install 'autoclf[onnx]'"

StepFn = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    json_path: Path
    size_bytes: int  # of the .onnx file
    opset: int
    vote: str
    members: list[str]  # one line per member: backbone, input size, views, models, weight
    check_images: int
    check_source: str
    max_abs_diff: float
    tolerance: float


# --- the graph ------------------------------------------------------------------------------


class MemberGraph(nn.Module):
    """One member on float NCHW pixels (0..255) at the cache size: its probabilities."""

    def __init__(self, member: Member, models: Sequence[nn.Module], *, cache_size: int):
        super().__init__()
        backbone, size = member.params.backbone, member.params.image_size
        mean, std = normalization(backbone)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.size, self.resize, self.mode = size, size != cache_size, interpolation(backbone)
        self.flips = [view.flip for view in member.views]
        self.grids: list[str | None] = []  # buffer names; None for a view without a resample
        for i, view in enumerate(member.views):
            grid = view_grid(view, size)
            if grid is not None:
                self.register_buffer(f"grid{i}", grid)
            self.grids.append(None if grid is None else f"grid{i}")
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # autoclf.inference.Preprocess
        if self.resize:
            x = F.interpolate(
                x, size=(self.size, self.size), mode=self.mode, antialias=True, align_corners=False
            )
            if self.mode == "bicubic":
                x = x.clamp(0, 255)
        x = (x - self.mean) / self.std
        # autoclf.inference.apply_views, with the grids built once, here
        n = x.shape[0]
        views = []
        for flip, grid in zip(self.flips, self.grids, strict=True):
            v = x.flip(3) if flip else x
            if grid is not None:
                v = F.grid_sample(
                    v,
                    getattr(self, grid).expand(n, -1, -1, -1),
                    mode="bilinear",
                    padding_mode="border",
                    align_corners=False,
                )
            views.append(v)
        batch = torch.cat(views) if len(views) > 1 else views[0]
        # autoclf.inference.predict_views and Predictor.member_probs
        total = None
        for model in self.models:
            probs = torch.softmax(model(batch), dim=1).view(len(views), n, -1).mean(dim=0)
            total = probs if total is None else total + probs
        return total / len(self.models)


class EnsembleGraph(nn.Module):
    """``Predictor.predict_pixels`` as one module: uint8 (N, S, S, 3) RGB → (N, classes)."""

    def __init__(self, members: Sequence[MemberGraph], weights: Sequence[float], vote: str):
        super().__init__()
        if vote not in ("soft", "hard"):
            raise ValueError(f"vote must be 'soft' or 'hard', got {vote!r}")
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.vote = vote

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        probs = [member(x) for member in self.members]
        soft = _weighted_sum(probs, self.weights)
        if self.vote == "soft":
            return soft
        # autoclf.ensemble.hard_vote: each member's weight goes to its argmax (the first of
        # equal ones, as numpy's and ONNX's ArgMax take it); a sliver of the soft vote breaks ties.
        classes = torch.arange(soft.shape[1], device=soft.device)
        one_hot = [(p.argmax(dim=1, keepdim=True) == classes).to(torch.float32) for p in probs]
        votes = _weighted_sum(one_hot, self.weights) + HARD_TIE_SHARE * soft
        return votes / votes.sum(dim=1, keepdim=True)


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        total = total + t * w
    return total


def build_graph(predictor: Predictor) -> EnsembleGraph:
    """The ensemble's graph on the CPU in fp32, its models loaded afresh from their files."""
    cpu = torch.device("cpu")
    members = [
        MemberGraph(
            member,
            [
                load_trained(
                    member.params, path, num_classes=len(predictor.classes), device=cpu
                ).float()
                for path in member.weights
            ],
            cache_size=predictor.image_size,
        )
        for member in predictor.members
    ]
    return EnsembleGraph(members, [m.weight for m in predictor.members], predictor.vote).eval()


# --- export, check, write -------------------------------------------------------------------


def export_onnx(
    studies_dir: str | os.PathLike,
    study: str,
    *,
    out: str | os.PathLike | None = None,
    check_images: int = CHECK_IMAGES,
    tolerance: float = TOLERANCE,
    on_step: StepFn = lambda _: None,
) -> ExportResult:
    """Export study ``study``'s finalized ensemble to ONNX, check it, then write it.

    ``out``: the .onnx file to write (default ``studies/NAME/final/model.onnx``), or a folder to
    write ``model.onnx`` into; ``model.json`` goes beside it with the same stem.
    """
    from autoclf.study import open_study_dir

    ort = _onnxruntime()
    if check_images < 1:
        raise AutoclfError(f"--check-images {check_images}: check at least 1 image")
    files = open_study_dir(studies_dir, study)
    predictor = Predictor(files.dir / "final", device="cpu")
    onnx_path = _onnx_path(out, predictor.final_dir)
    json_path = onnx_path.with_suffix(".json")

    # The images first: a study whose images and cache are gone stops before the export's work.
    pixels, names, source = _check_pixels(files, predictor.image_size, check_images)
    on_step(f"exporting {len(predictor.members)} member(s) to ONNX (opset {OPSET})")
    graph = build_graph(predictor)
    model_bytes = _export(graph, predictor.image_size)
    del graph  # its models: the Predictor loads its own, from the same files

    on_step(f"checking onnxruntime against autoclf on {len(pixels)} of {source}")
    session = _session(ort, model_bytes)
    theirs = np.concatenate(
        [
            session.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels[i : i + CHECK_BATCH])})[0]
            for i in range(0, len(pixels), CHECK_BATCH)
        ]
    )
    ours = predictor.predict_pixels(pixels)
    diff = np.abs(theirs.astype(np.float64) - ours.astype(np.float64))
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    max_diff = float(diff[worst])
    if not max_diff <= tolerance:  # NaN refuses too
        raise AutoclfError(
            f"the ONNX export disagrees with autoclf: largest absolute difference {max_diff:.3g} "
            f"(tolerance {tolerance:g}) on {names[worst[0]]}, class "
            f"{predictor.classes[worst[1]]!r} (onnxruntime {float(theirs[worst]):.6f}, autoclf "
            f"{float(ours[worst]):.6f}); nothing was written"
            + (_HARD_TIE_HINT if predictor.vote == "hard" else "")
        )

    members = [_describe(m, predictor.image_size) for m in predictor.members]
    sidecar = _sidecar(
        predictor,
        onnx_name=onnx_path.name,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        members=members,
        check={
            "images": len(pixels),
            "source": source,
            "against": "autoclf Predictor.predict_pixels on the CPU, fp32",
            "max_abs_diff": max_diff,
            "tolerance": tolerance,
        },
    )
    atomic.write_with(onnx_path, lambda tmp: tmp.write_bytes(model_bytes), suffix=".onnx")
    atomic.write_json(json_path, sidecar)
    return ExportResult(
        onnx_path=onnx_path,
        json_path=json_path,
        size_bytes=len(model_bytes),
        opset=OPSET,
        vote=predictor.vote,
        members=[_member_line(m) for m in members],
        check_images=len(pixels),
        check_source=source,
        max_abs_diff=max_diff,
        tolerance=tolerance,
    )


_HARD_TIE_HINT = (
    ". A hard vote follows each member's top class: where two classes are within rounding "
    "of each other, onnxruntime and torch can pick different ones. `autoclf finalize --vote "
    "soft` makes an ensemble whose export has no such step"
)


def _onnxruntime() -> Any:
    """onnxruntime, having made sure the exporter's packages are there too."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise AutoclfError(
            f"autoclf export needs {', '.join(missing)}, which are not installed: {EXTRA}"
        )
    import onnxruntime

    return onnxruntime


def _onnx_path(out: str | os.PathLike | None, final_dir: Path) -> Path:
    path = atomic.target(out, final_dir / ONNX_NAME)
    if path.suffix != ".onnx":
        raise AutoclfError(
            f"--out {path}: give a file ending in .onnx (its .json goes beside it) or a folder"
        )
    return path


def _export(graph: EnsembleGraph, size: int) -> bytes:
    """The graph as ONNX bytes, with a dynamic batch axis."""
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # 2: a batch of 1 would stay 1
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise AutoclfError(
            f"this torch ({torch.__version__}) has no torch.export-based ONNX exporter "
            "(torch.onnx.export(dynamo=True)): upgrade torch"
        )
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
                verbose=False,  # the library does not print
            )
    except Exception as exc:  # the exporter's errors have no common base class
        raise AutoclfError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    try:
        return program.model_proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise AutoclfError(
            f"the ensemble does not fit in one ONNX file ({exc}): finalize with fewer members "
            "(--top-k) or with --refit full (one model per member instead of one per fold)"
        ) from exc


def _session(ort: Any, model_bytes: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as autoclf's own share of cores
    options.log_severity_level = 3  # errors only: the library does not print
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _check_pixels(files: Any, size: int, limit: int) -> tuple[np.ndarray, list[str], str]:
    """Up to ``limit`` of the study's images, spread over its index, as the image cache holds
    them (the out-of-fold images finalize scored the ensemble on): pixels, names, source."""
    from autoclf.data.cache import build_cache

    paths = list(files.index.paths)
    cache_dir = files.dir / "cache"
    try:
        images = build_cache(paths, size=size, cache_dir=cache_dir).images
        source = "the study's training images (out-of-fold)"
    except (OSError, AutoclfError):  # the images were moved or deleted: any cache will do
        cached = sorted(cache_dir.glob(f"images-{size}px-*.npy"), key=lambda p: p.stat().st_mtime)
        if not cached:
            raise AutoclfError(
                f"no images to check the export on: the study's images cannot be read "
                f"(was {paths[0] if paths else 'its data'} moved?) and {cache_dir} holds no "
                f"{size} px cache"
            ) from None
        images = np.load(cached[-1], mmap_mode="r")
        paths = [f"{cached[-1].name}[{i}]" for i in range(len(images))]
        source = f"the study's cached training images ({cached[-1].name}; the files are gone)"
    rows = np.unique(np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int))
    return np.ascontiguousarray(images[rows]), [paths[i] for i in rows], source


# --- the sidecar ----------------------------------------------------------------------------


def _describe(member: Member, cache_size: int) -> dict[str, Any]:
    backbone, size = member.params.backbone, member.params.image_size
    mean, std = normalization(backbone)
    return {
        "backbone": backbone,
        "kind": member.params.kind,
        "input_size": size,
        "resize": (
            f"antialiased {interpolation(backbone)} from {cache_size} to {size} px"
            + (", clamped to 0..255" if interpolation(backbone) == "bicubic" else "")
            if size != cache_size
            else "none"
        ),
        "mean": list(mean),
        "std": list(std),
        "views": [view.name for view in member.views],
        "models": len(member.weights),
        "weight": member.weight,
    }


def _member_line(m: dict[str, Any]) -> str:
    views = ", ".join(m["views"])
    return (
        f"{m['backbone']} at {m['input_size']} px, weight {m['weight']:.3g}: "
        f"{m['models']} model(s) × {len(m['views'])} view(s) ({views})"
    )


def preprocessing_rule(size: int) -> dict[str, Any]:
    """How autoclf turns an image file into the graph's input, in words and parameters: what
    :func:`autoclf.data.images.load_rgb` and :func:`autoclf.data.cache.resize_square` do."""
    draft = max(2 * size, DRAFT_FLOOR)
    return {
        "size": size,
        "jpeg_draft": draft,
        "steps": [
            f"Decode with Pillow: im = PIL.Image.open(path); im.draft('RGB', ({draft}, {draft})) "
            "(only JPEGs are affected: they decode at 1/2, 1/4 or 1/8 scale while both sides stay "
            f"at least {draft} px); im.load().",
            "Upright: im = PIL.ImageOps.exif_transpose(im) (applies the EXIF orientation).",
            "16-bit or float grayscale (modes I;16, I;16B, I;16L, I, F): stretch the image's own "
            "min..max to 0..255, round, as uint8 (an image of one value becomes 0), then repeat "
            "it into 3 channels.",
            "Transparency (modes RGBA, LA, PA, or P with a 'transparency' entry in im.info): "
            "im.convert('RGBA') composited over opaque white with PIL.Image.alpha_composite.",
            "Otherwise np.asarray(im.convert('RGB'), dtype=np.uint8): H×W×3, RGB order.",
            f"Square resize, aspect ratio not kept, unless H×W is already {size}×{size}: "
            f"cv2.resize(rgb, ({size}, {size}), interpolation=cv2.INTER_AREA if H*W >= "
            f"{size}*{size} else cv2.INTER_CUBIC), on the RGB array (OpenCV's BGR order is never "
            "involved).",
            f"Stack images into one uint8 array (N, {size}, {size}, 3) and feed it as '{INPUT}'.",
        ],
    }


def _sidecar(
    predictor: Predictor,
    *,
    onnx_name: str,
    sha256: str,
    members: list[dict[str, Any]],
    check: dict[str, Any],
) -> dict[str, Any]:
    size, n_classes = predictor.image_size, len(predictor.classes)
    vote = (
        "soft: the members' probabilities, weighted by their weights (which sum to 1), added"
        if predictor.vote == "soft"
        else "hard: each member gives its weight to its most probable class (the first of "
        f"equal ones); {HARD_TIE_SHARE:g} × the soft vote is added to break ties; the sums are "
        "divided by their total. Outputs are vote shares, not probabilities"
    )
    return {
        "format": "autoclf-onnx",
        "format_version": FORMAT_VERSION,
        "autoclf_version": autoclf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": predictor.manifest.get("study"),
        "model": onnx_name,
        "sha256": sha256,
        "opset": OPSET,
        "classes": list(predictor.classes),
        "input": {
            "name": INPUT,
            "dtype": "uint8",
            "layout": "NHWC",
            "shape": ["batch", size, size, 3],
            "channels": "RGB",
        },
        "output": {
            "name": OUTPUT,
            "dtype": "float32",
            "shape": ["batch", n_classes],
            "meaning": "one row per image, one column per class in 'classes' order; rows sum "
            "to 1; the predicted class is the argmax"
            + ("" if predictor.vote == "soft" else " (vote shares of a hard vote)"),
        },
        "preprocessing": preprocessing_rule(size),
        "in_graph": [
            "uint8 NHWC → float32 NCHW (0..255)",
            "per member: resize to its input size where it differs from "
            f"{size} px (antialiased, torch F.interpolate's filter); (x - 255·mean) / (255·std)",
            "per member: its TTA views, all in the graph (hflip; zoom and shift: a bilinear "
            "resample on a fixed grid, border padding); every model (fold models or one full "
            "model); softmax; mean over views, then over models",
            f"vote: {vote}",
        ],
        "vote": predictor.vote,
        "members": members,
        "check": check,
    }
