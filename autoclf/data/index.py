"""DATA → one table of (path, label, group): a folder of class folders, a CSV, or ``digits``."""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoclf import atomic
from autoclf.data.images import IMAGE_EXTENSIONS
from autoclf.errors import DataError

BUILTIN = ("digits", "digits-test")


@dataclass(frozen=True)
class DataIndex:
    """The images of a data set, in a fixed order that every stage shares."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]  # index into ``classes``
    classes: tuple[str, ...]
    groups: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)

    def without(self, paths: set[str] | dict[str, str]) -> DataIndex:
        """The same index less ``paths`` (classes keep their numbers, even if emptied)."""
        keep = [i for i, p in enumerate(self.paths) if p not in paths]
        return DataIndex(
            paths=tuple(self.paths[i] for i in keep),
            labels=tuple(self.labels[i] for i in keep),
            classes=self.classes,
            groups=tuple(self.groups[i] for i in keep) if self.groups is not None else None,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.label_array, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True)}


def build_index(source: str | Path, *, datasets_dir: str | Path) -> DataIndex:
    """Index ``source``: ``digits``/``digits-test``, a CSV file, or an ImageFolder directory.

    ``datasets_dir`` is where the built-in sets are written as image files, so that they go
    through the very same decoding path as a user's images.
    """
    text = str(source)
    if text in BUILTIN:
        split = "test" if text == "digits-test" else "train"
        return _index_folder(materialize_digits(Path(datasets_dir)) / split)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {path} (expected a folder, a CSV file, or 'digits')")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"data file {path} is not a .csv; give a CSV or a folder of classes")
        return _index_csv(path)
    return _index_folder(path)


def _index_folder(root: Path) -> DataIndex:
    root = root.resolve()
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: _natural_key(d.name),
    )
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders (expected ROOT/<class>/<image>)")
    _refuse_split_folders(root, class_dirs)
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            f
            for f in class_dir.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"class {class_dir.name!r} is empty: no images in {class_dir}")
        paths.extend(str(f) for f in files)
        labels.extend([label] * len(files))
    return DataIndex(tuple(paths), tuple(labels), tuple(d.name for d in class_dirs))


# Folder names that mean a split of the data, not a class.
SPLIT_NAMES = frozenset(
    {"train", "training", "val", "valid", "validation", "test", "testing", "dev", "holdout"}
)


def _refuse_split_folders(root: Path, class_dirs: list[Path]) -> None:
    """Stop on ROOT/train/<class>/…, ROOT/val/<class>/…: indexed as it stands, the search would
    learn to tell the splits apart, and the held-out images would be trained on."""
    splits = {}
    for d in class_dirs:
        if d.name.lower() not in SPLIT_NAMES:
            continue
        subs = sorted(s.name for s in d.iterdir() if s.is_dir() and not s.name.startswith("."))
        direct = any(f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())
        if subs and not direct:
            splits[d.name] = subs
    if splits:
        first = next(iter(splits))
        held = ", ".join(f"{name}/ ({', '.join(subs)})" for name, subs in splits.items())
        raise DataError(
            f"{root} looks like a train/val/test split, not a folder of classes: {held} "
            f"hold class folders of their own. Give one split as DATA, e.g. {root / first}, "
            "and a held-out one to 'finalize --test'"
        )


def _index_csv(csv_path: Path) -> DataIndex:
    csv_path = csv_path.resolve()
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {missing}; found {columns} "
                "(expected path,label and optionally group)"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    has_group = "group" in columns
    seen: dict[str, int] = {}
    not_found: list[str] = []
    for line, row in enumerate(rows, start=2):
        if not row["path"] or not row["label"]:
            raise DataError(f"{csv_path}:{line}: empty path or label")
        if has_group and not row["group"]:
            raise DataError(f"{csv_path}:{line}: empty group")
        full = (csv_path.parent / row["path"]).resolve()
        if str(full) in seen:
            first = seen[str(full)]
            raise DataError(
                f"{csv_path}:{line}: duplicate path {row['path']!r} (first on line {first})"
            )
        seen[str(full)] = line
        if not full.is_file():
            not_found.append(row["path"])
        row["path"] = str(full)
    if not_found:
        shown = ", ".join(not_found[:10]) + (
            f" … and {len(not_found) - 10} more" if len(not_found) > 10 else ""
        )
        raise DataError(
            f"{csv_path}: {len(not_found)} path(s) do not exist (relative to the CSV): {shown}"
        )
    classes = sorted({row["label"] for row in rows}, key=_natural_key)
    lookup = {name: i for i, name in enumerate(classes)}
    return DataIndex(
        paths=tuple(row["path"] for row in rows),
        labels=tuple(lookup[row["label"]] for row in rows),
        classes=tuple(classes),
        groups=tuple(row["group"] for row in rows) if has_group else None,
    )


def build_prediction_index(
    source: str | Path, *, classes: tuple[str, ...], datasets_dir: str | Path
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Images to predict: their paths and, where the data carries labels, the label ids in
    ``classes`` (the training classes). A flat folder of images, or a CSV with only a
    ``path`` column, has no labels."""
    text = str(source)
    path = Path(source).expanduser()
    if text not in BUILTIN and path.is_dir() and not _has_class_folders(path):
        files = sorted(
            str(f.resolve())
            for f in path.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"no images in {path}")
        return tuple(files), None
    if text not in BUILTIN and path.is_file() and path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = [c.strip() for c in (next(csv.reader(fh), None) or [])]
        if "label" not in header:
            return _paths_only_csv(path.resolve()), None
    index = build_index(source, datasets_dir=datasets_dir)
    unknown = sorted(set(index.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{source}: label(s) {unknown} were not among the training classes {list(classes)}"
        )
    lookup = {name: i for i, name in enumerate(classes)}
    labels = np.asarray([lookup[index.classes[label]] for label in index.labels], dtype=np.int64)
    return index.paths, labels


def _has_class_folders(root: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())


def _paths_only_csv(csv_path: Path) -> tuple[str, ...]:
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0]:
        raise DataError(f"{csv_path}: needs a 'path' column (and optionally 'label')")
    paths = [(csv_path.parent / r["path"].strip()).resolve() for r in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{csv_path}: {len(missing)} path(s) do not exist, e.g. {missing[0]}")
    return tuple(str(p) for p in paths)


def save_index(index: DataIndex, folds: np.ndarray, target: str | Path) -> None:
    """Write the table (path, label, group, fold, class_index) that every later stage reads.
    ``class_index`` is the label's place in ``index.classes``: the model's output for it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "group", "fold", "class_index"])
    groups = index.groups or ("",) * len(index)
    for path, label, group, fold in zip(index.paths, index.labels, groups, folds, strict=True):
        writer.writerow([path, index.classes[label], group, int(fold), label])
    atomic.write_text(target, buffer.getvalue())


def load_index(source: str | Path) -> tuple[DataIndex, np.ndarray]:
    """Read a table written by :func:`save_index`; return the index and its folds."""
    with Path(source).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    classes = _saved_classes(rows, source)
    lookup = {name: i for i, name in enumerate(classes)}
    has_group = any(r["group"] for r in rows)
    index = DataIndex(
        paths=tuple(r["path"] for r in rows),
        labels=tuple(lookup[r["label"]] for r in rows),
        classes=tuple(classes),
        groups=tuple(r["group"] for r in rows) if has_group else None,
    )
    return index, np.asarray([int(r["fold"]) for r in rows], dtype=np.int64)


def _saved_classes(rows: list[dict[str, str]], source: str | Path) -> list[str]:
    """The class order the table was written with; a table from before ``class_index``
    (2026-12) was always in the natural order of the names."""
    if not rows or rows[0].get("class_index") is None:
        return sorted({r["label"] for r in rows}, key=_natural_key)
    order: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if order.setdefault(row["label"], row["class_index"]) != row["class_index"]:
            raise DataError(
                f"{source}, line {line}: class {row['label']!r} has class_index "
                f"{row['class_index']!r}, but {order[row['label']]!r} on an earlier line"
            )
    if set(order.values()) != {str(i) for i in range(len(order))}:
        raise DataError(
            f"{source}: the class_index column is not 0..{len(order) - 1}, one for each class"
        )
    return sorted(order, key=lambda name: int(order[name]))


def materialize_digits(datasets_dir: Path) -> Path:
    """Write scikit-learn's bundled digits as PNG files (80/20 stratified train/test), once."""
    root = datasets_dir / "digits"
    if (root / "COMPLETE").is_file():
        return root
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 → 0..255
    idx = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        idx, test_size=0.2, stratify=digits.target, random_state=0
    )
    datasets_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=datasets_dir, prefix=".digits-"))
    try:
        for split, split_idx in (("train", train_idx), ("test", test_idx)):
            for i in split_idx:
                out = tmp / split / str(digits.target[i]) / f"{i:04d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(out)
        (tmp / "COMPLETE").write_text("scikit-learn digits, 80/20 stratified split, seed 0\n")
        if root.exists() and not (root / "COMPLETE").is_file():  # an interrupted earlier write
            shutil.rmtree(root)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "COMPLETE").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _natural_key(text: str) -> tuple:
    """ "class2" before "class10", whatever the case; names alike under that ("Cat" and "cat",
    "class_1" and "class_01") in the order of their text, so that the order of the classes,
    and so the meaning of the model's outputs, never depends on the order they were found in."""
    natural = tuple(int(p) if p.isdecimal() else p.lower() for p in re.split(r"(\d+)", text))
    return natural, text
