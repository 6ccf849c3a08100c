"""The Python API: ``autoclf.load(PATH).predict(...)``, the one inference path."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import autoclf
from autoclf.errors import AutoclfError, DataError
from autoclf.predictor import to_pixels
from tests.conftest import autoclf as autoclf_command

API_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
import autoclf

study, pil, path, array = sys.argv[1:]
predictor = autoclf.load(study, device="cpu")
out = predictor.predict([Image.open(pil), path, np.asarray(Image.open(array).convert("RGB"))])
print(json.dumps({"labels": out.labels, "probs": out.probs.tolist()}))
"""


@pytest.fixture
def study(finalized_digits, tmp_path) -> Path:
    """A copy of the finalized digits study (predict writes its cache into the study's folder)."""
    shutil.copytree(finalized_digits, tmp_path / "studies")
    return tmp_path / "studies"


def _digits(studies: Path, n: int) -> list[Path]:
    return sorted((studies / "_datasets" / "digits" / "test").rglob("*.png"))[::37][:n]


@pytest.mark.slow
def test_load_then_predict_agrees_with_the_predict_command(study, tmp_path):
    """A PIL image, a path and an array, predicted in a fresh process through the API, get
    the labels (and probabilities) that `autoclf predict` gives the same files."""
    images = tmp_path / "images"
    images.mkdir()
    for source in _digits(study, 3):
        shutil.copy(source, images / f"{source.parent.name}-{source.name}")
    files = sorted(images.iterdir())
    out = tmp_path / "predictions.csv"
    done = autoclf_command(
        "predict", str(images), "--study", "s", "--studies-dir", str(study), "--device", "cpu",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    api = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(study / "s"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert api.returncode == 0, api.stderr
    got = json.loads(api.stdout)
    assert got["labels"] == [rows[f.name]["label"] for f in files]
    expected = [[float(rows[f.name][f"prob_{d}"]) for d in range(10)] for f in files]
    assert np.allclose(got["probs"], expected, atol=2e-6)  # the CSV keeps 6 decimals


def test_one_input_or_many_and_the_same_probabilities_whichever_way_in(finalized_digits):
    predictor = autoclf.load(finalized_digits / "s" / "final", device="cpu")
    assert predictor.classes == tuple(str(d) for d in range(10))
    paths = _digits(finalized_digits, 4)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    by_path = predictor.predict(paths)
    by_array = predictor.predict(arrays)  # (N, H, W, 3): N images
    one = predictor.predict(str(paths[0]))
    assert len(by_path) == len(by_array) == 4 and len(one) == 1
    assert by_path.probs.shape == (4, 10) and np.allclose(by_path.probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(by_path.probs, by_array.probs, atol=1e-6)
    assert np.allclose(one.probs[0], by_path.probs[0], atol=1e-6)
    assert by_path.labels == [predictor.classes[i] for i in by_path.probs.argmax(axis=1)]
    # Each member's probabilities (its views and fold models averaged), weighted: the vote.
    pixels = np.stack([to_pixels(p, predictor.image_size) for p in paths])
    members = np.stack(predictor.member_probs(pixels))
    weights = np.array([m.weight for m in predictor.members])
    assert len(members) == 2 and weights.sum() == pytest.approx(1)
    assert np.allclose(np.tensordot(weights, members, axes=1), by_path.probs, atol=1e-6)
    assert predictor.predict([]).probs.shape == (0, 10)


def test_bad_inputs_are_named_by_position(finalized_digits, tmp_path):
    predictor = autoclf.load(finalized_digits / "s", device="cpu")
    good = _digits(finalized_digits, 1)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        ([good, tmp_path / "missing.png"], r"input 1: no such file: .*missing\.png"),
        ([good, good, broken], r"input 2: cannot decode image .*broken\.png"),
        ([np.zeros((8, 8), np.uint8)], r"input 0: an array of shape \(8, 8\) and dtype uint8"),
        ([good, np.zeros((8, 8, 3), np.float32)], r"input 1: .*dtype float32; expected an H×W×3"),
        ([good, 42], r"input 1: a int; expected a file path, a PIL image"),
    ]
    for inputs, message in cases:
        with pytest.raises(DataError, match=message):
            predictor.predict(inputs)


def test_load_wants_a_finalized_study(tmp_path):
    with pytest.raises(AutoclfError, match="no saved ensemble at .*once `autoclf finalize`"):
        autoclf.load(tmp_path)


def test_members_predict_under_their_own_amp_setting_and_no_images_give_no_rows(study, monkeypatch):
    """A member trained with amp: false (fp16 overflowed) is predicted without autocast, as
    the OOF that chose it was; an empty batch (a service's) is an empty answer."""
    from autoclf import predictor as predictor_module

    manifest_path = study / "s" / "final" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["members"][0]["params"]["amp"] = False
    manifest_path.write_text(json.dumps(manifest))
    seen, real = [], predictor_module.predict_views

    def spied(*args, **kwargs):
        seen.append(kwargs.get("amp", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "predict_views", spied)
    model = autoclf.load(study / "s", device="cpu")
    pixels = np.zeros((2, model.image_size, model.image_size, 3), np.uint8)
    assert model.predict_pixels(pixels).shape == (2, len(model.classes))
    n_folds = len(model.members[0].weights)
    assert seen == [False] * n_folds + [True] * (len(seen) - n_folds)
    assert model.predict_pixels(pixels[:0]).shape == (0, len(model.classes))
