"""autoclf export: the ensemble as one ONNX graph, checked against autoclf before it is written,
that runs in onnxruntime without torch or timm."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoclf import export
from autoclf.errors import AutoclfError
from autoclf.export import export_onnx
from autoclf.models import interpolation
from autoclf.predictor import Predictor, to_pixels
from tests.conftest import autoclf as autoclf_command
from tests.studies import finalize_study

# A service's process: torch and timm cannot even be imported (a None in sys.modules makes
# `import torch` raise ImportError), so onnxruntime, numpy and the sidecar are all it has.
SERVICE = """
import json, sys
sys.modules["torch"] = None
sys.modules["timm"] = None
from pathlib import Path
import numpy as np
import onnxruntime as ort

sidecar = Path(sys.argv[1])
meta = json.loads(sidecar.read_text())
model = str(sidecar.parent / meta["model"])
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
for name in sys.argv[2:]:
    pixels = np.load(name)
    assert pixels.dtype == np.dtype(meta["input"]["dtype"]), pixels.dtype
    assert list(pixels.shape[1:]) == meta["input"]["shape"][1:], pixels.shape
    (probs,) = session.run([meta["output"]["name"]], {meta["input"]["name"]: pixels})
    np.save(name[: -len(".npy")] + "-probs.npy", probs)
print(sorted(m for m in ("torch", "timm") if sys.modules.get(m) is not None))
"""


def _copy(studies: Path, to: Path) -> Path:
    shutil.copytree(studies, to)
    return to


def _digits(studies: Path, n: int) -> list[Path]:
    """Test images the search never saw (the check uses the training images)."""
    return sorted((studies / "_datasets" / "digits" / "test").rglob("*.png"))[::13][:n]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def exported(finalized_digits, tmp_path_factory) -> Path:
    """A copy of the finalized digits study, exported to ONNX (soft vote, 2 members, 3 views)."""
    studies = _copy(finalized_digits, tmp_path_factory.mktemp("exported") / "studies")
    export_onnx(studies, "s")
    return studies


def test_the_export_writes_the_model_and_a_sidecar_that_says_what_it_holds(exported):
    final = exported / "s" / "final"
    meta = json.loads((final / "model.json").read_text())
    manifest = json.loads((final / "manifest.json").read_text())
    n_images = len((exported / "s" / "index.csv").read_text().splitlines()) - 1
    assert meta["model"] == "model.onnx"
    assert meta["sha256"] == hashlib.sha256((final / "model.onnx").read_bytes()).hexdigest()
    assert meta["classes"] == manifest["classes"]
    assert meta["input"] == {
        "name": "pixels",
        "dtype": "uint8",
        "layout": "NHWC",
        "shape": ["batch", 16, 16, 3],
        "channels": "RGB",
    }
    assert meta["output"]["name"] == "probs" and meta["output"]["shape"] == ["batch", 10]
    assert meta["opset"] == 18 and meta["vote"] == "soft"
    assert [(m["backbone"], m["views"], m["models"], m["weight"]) for m in meta["members"]] == [
        (m["params"]["backbone"], m["views"], len(m["weights"]), m["weight"])
        for m in manifest["members"]
    ]
    assert meta["check"]["images"] == min(256, n_images)
    assert 0 <= meta["check"]["max_abs_diff"] <= 1e-4
    rule = " ".join(meta["preprocessing"]["steps"])
    for step in ("exif_transpose", "alpha_composite", "I;16", "INTER_AREA", "INTER_CUBIC"):
        assert step in rule
    assert _leftovers(final) == []  # the atomic writes' temporary files are gone


def test_onnxruntime_without_torch_or_timm_agrees_with_autoclf_at_any_batch_size(
    exported, tmp_path
):
    predictor = Predictor(exported / "s", device="cpu")
    files = _digits(exported, 8)
    batches = {"one": files[:1], "seven": files[1:]}
    for name, paths in batches.items():
        pixels = np.stack([to_pixels(p, predictor.image_size) for p in paths])
        np.save(tmp_path / f"{name}.npy", pixels)
    done = subprocess.run(
        [sys.executable, "-c", SERVICE, str(exported / "s" / "final" / "model.json")]
        + [str(tmp_path / f"{name}.npy") for name in batches],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # neither torch nor timm was imported
    for name, paths in batches.items():
        theirs = np.load(tmp_path / f"{name}-probs.npy")
        ours = predictor.predict(paths).probs
        assert theirs.shape == (len(paths), 10)
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_an_export_that_disagrees_with_autoclf_is_refused_and_nothing_is_written(
    finalized_digits, tmp_path, monkeypatch, capfd
):
    """One model of the graph gets its classifier's bias nudged after loading, as a wrong
    export would compute: the check names the difference and the image, and writes nothing."""
    studies = _copy(finalized_digits, tmp_path / "studies")
    real_load = export.load_trained
    loaded = []

    def load_then_nudge(*args, **kwargs):
        model = real_load(*args, **kwargs)
        if not loaded:
            head = model.get_classifier()
            head.bias.data[0] += 0.5
        loaded.append(model)
        return model

    monkeypatch.setattr(export, "load_trained", load_then_nudge)
    with pytest.raises(AutoclfError) as refused:
        export_onnx(studies, "s", check_images=16)
    message = str(refused.value)
    assert "disagrees with autoclf: largest absolute difference" in message
    assert "tolerance 0.0001" in message and "nothing was written" in message
    assert "_datasets/digits/train/" in message  # the image, by its path
    final = studies / "s" / "final"
    assert not (final / "model.onnx").exists() and not (final / "model.json").exists()
    assert _leftovers(final) == []
    assert capfd.readouterr() == ("", "")  # the library says it all in the error


@pytest.mark.slow
def test_a_hard_vote_is_exported_inside_the_graph(finalized_digits, tmp_path):
    studies = _copy(finalized_digits, tmp_path / "studies")
    finalize_study(
        studies, vote="hard", select="topk", top_k=2, tta="3", refit="folds", device="cpu"
    )
    out = tmp_path / "service" / "hard.onnx"
    out.parent.mkdir()
    result = export_onnx(studies, "s", out=out, check_images=64)
    assert result.vote == "hard" and result.max_abs_diff <= 1e-4
    assert (tmp_path / "service" / "hard.json").is_file()
    meta = json.loads((tmp_path / "service" / "hard.json").read_text())
    assert meta["vote"] == "hard" and "vote shares" in meta["output"]["meaning"]
    import onnxruntime as ort

    predictor = Predictor(studies / "s", device="cpu")
    pixels = np.stack([to_pixels(p, predictor.image_size) for p in _digits(studies, 9)])
    (theirs,) = ort.InferenceSession(str(out)).run(["probs"], {"pixels": pixels})
    np.testing.assert_allclose(theirs, predictor.predict_pixels(pixels), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_export_command_with_resized_members_and_every_view(finalized_digits, tmp_path):
    """`autoclf export` on an ensemble whose members take 11 and 13 px images from the 16 px
    cache (antialiased bilinear and bicubic resizes in the graph), one of them under all 8
    views: the check passes and the command says what it wrote."""
    studies = _copy(finalized_digits, tmp_path / "studies")
    manifest_path = studies / "s" / "final" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for member, size in zip(manifest["members"], (11, 13), strict=True):
        member["params"]["image_size"] = size  # both backbones pool globally: any size works
    manifest["members"][0]["views"] = [
        "identity", "hflip", "zoom", "hflip+zoom", "shift+", "shift-", "hflip+shift+",
        "hflip+shift-",
    ]  # fmt: skip
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "m.onnx"
    done = autoclf_command(
        "export", "--study", "s", "--studies-dir", str(studies), "--out", str(out),
        "--check-images", "64", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"model: {out} (" in done.stdout and " MB)" in done.stdout
    assert f"sidecar: {tmp_path / 'm.json'}" in done.stdout
    assert "in the graph (opset 18)" in done.stdout and "soft vote" in done.stdout
    assert "at 11 px" in done.stdout and "8 view(s)" in done.stdout
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["check"]["images"] == 64 and meta["check"]["max_abs_diff"] <= 1e-4
    # Each member in its backbone's interpolation; the two backbones have one each.
    resizes = [m["resize"] for m in meta["members"]]
    for member, size, resize in zip(manifest["members"], (11, 13), resizes, strict=True):
        mode = interpolation(member["params"]["backbone"])
        assert resize.startswith(f"antialiased {mode} from 16 to {size} px"), resize
    assert {resize.split()[1] for resize in resizes} == {"bilinear", "bicubic"}

    missing = autoclf_command(
        "export", "--study", "nope", "--studies-dir", str(studies), cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "error: no study 'nope'" in missing.stderr


def test_a_missing_or_unfinalized_study_is_a_clear_error(finalized_digits, tmp_path):
    with pytest.raises(AutoclfError, match="no study 'nope' in .*run `autoclf search` first"):
        export_onnx(finalized_digits, "nope")
    studies = _copy(finalized_digits, tmp_path / "studies")
    shutil.rmtree(studies / "s" / "final")
    with pytest.raises(AutoclfError, match="no saved ensemble at .*once `autoclf finalize`"):
        export_onnx(studies, "s")


def test_a_wrong_out_path_is_refused_before_any_work(finalized_digits, tmp_path):
    with pytest.raises(AutoclfError, match=r"--out .*model\.txt: give a file ending in \.onnx"):
        export_onnx(finalized_digits, "s", out=tmp_path / "model.txt")


def test_without_the_onnx_extra_the_export_says_what_to_install(finalized_digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    with pytest.raises(AutoclfError, match=r"needs onnxruntime.*pip install 'autoclf\[onnx\]'"):
        export_onnx(finalized_digits, "s")
