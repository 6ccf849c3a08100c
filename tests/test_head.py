"""Frozen-feature trials: the feature cache, head-only trials, LP-FT, and spaces that mix
head-only and fine-tune trials. Offline, with EfficientNet-Lite0's ImageNet weights from the
``lite`` extra, on small real photographs (hymenoptera)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoclf import pretrained
from autoclf.config import TrainParams
from autoclf.data.cache import build_cache
from autoclf.errors import SpaceError
from autoclf.features import FeatureStore, feature_views, pooled_features
from autoclf.head import fit_head, train_head
from autoclf.inference import Preprocess, predict_views
from autoclf.metrics import get_metric
from autoclf.models import create_model, ensure_pretrained
from autoclf.search.space import parse_space
from autoclf.trainer import fit
from tests.test_pretrained import ANT, hymenoptera_val

LITE0 = "tf_efficientnet_lite0"
ACCURACY = get_metric("accuracy")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A weights store holding lite0's ImageNet weights, for the module and its processes."""
    path = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pretrained.ENV_DIR, str(path))
        ensure_pretrained([LITE0])
        yield path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """12 ants and 12 bees from hymenoptera val as an image folder, and their 96 px cache."""
    root = tmp_path_factory.mktemp("photos")
    data = root / "data"
    for path, label in hymenoptera_val(per_class=12):
        target = data / ("ants" if label == ANT else "bees") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    labels = np.array([0 if "/ants/" in p else 1 for p in paths])
    cache = build_cache(paths, size=96, cache_dir=root / "cache")
    return data, np.asarray(cache.images), labels


def head_params(**overrides) -> TrainParams:
    values = dict(backbone=LITE0, kind="head", pretrained=True, image_size=96, lr=1e-2, epochs=20)
    return TrainParams(**{**values, **overrides})


# --- the space ----------------------------------------------------------------------------

MIXED = """
params:
  kind: {type: categorical, choices: [head, finetune]}
  backbone: tf_efficientnet_lite0
  pretrained: true
  image_size: 64
head:
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
  epochs: 20
finetune:
  lr: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}
  freeze_bn: true
  lp_ft: {type: categorical, choices: [true, false]}
"""


def test_a_mixed_space_gives_each_kind_its_own_settings():
    import optuna

    space = parse_space(MIXED)
    assert space.kinds == ("head", "finetune")
    assert space.max_epochs == 10  # fine-tune epochs (the default), not the head's 20
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        seen[params.kind] = (params, dict(trial.params))
        study.tell(trial, 0.5)
    head, head_names = seen["head"]
    tune, tune_names = seen["finetune"]
    assert 1e-3 <= head.lr <= 1e-1 and head.epochs == 20 and not head.freeze_bn
    assert 1e-5 <= tune.lr <= 1e-4 and tune.freeze_bn and tune.epochs == 10
    assert set(head_names) == {"kind", "head.lr"}
    assert set(tune_names) == {"kind", "finetune.lr", "finetune.lp_ft"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # a fine-tune setting given to head-only trials, shared or in their own section
        (("  image_size: 64\n", "  image_size: 64\n  scheduler: step\n"), "params.scheduler"),
        (("  epochs: 20\n", "  epochs: 20\n  aug_strength: 0.2\n"), "head.aug_strength"),
        (("  epochs: 20\n", "  epochs: 20\n  lp_ft: true\n"), "head.lp_ft"),
        # a setting given twice, a section no trial has, a body that is not pretrained
        (("  epochs: 20\n", "  epochs: 20\n  image_size: 96\n"), "head.image_size"),
        (("choices: [head, finetune]", "choices: [finetune]"), "'head:' section"),
        (("  pretrained: true\n", "  pretrained: false\n"), "pretrained"),
        (("choices: [head, finetune]", "choices: [head, linear]"), "params.kind"),
    ],
)
def test_a_space_that_misplaces_a_setting_is_refused_naming_the_key(change, named):
    with pytest.raises(SpaceError) as err:
        parse_space(MIXED.replace(*change), where="space.yaml")
    assert named in str(err.value)
    assert str(err.value).startswith("space.yaml: ")


def test_head_only_spaces_shipped_with_autoclf_parse():
    from autoclf.search.space import load_space

    mixed = load_space("cpu-mixed")
    assert mixed.kinds == ("head", "finetune") and True in mixed.possible("lp_ft")
    assert mixed.make_sampler(0)._group  # TPE models each kind's parameters apart
    assert load_space("cpu-head").kinds == ("head",)


# --- features and heads ------------------------------------------------------------------


def test_a_head_on_cached_features_predicts_as_the_full_model_does(store, photos, tmp_path):
    """What a head-only fold scores on features is what its saved full model (body + head)
    predicts from the images: finalize, TTA and predict need no path of their own."""
    _, images, labels = photos
    features_store = FeatureStore(tmp_path / "features", images, "test-cache", CPU)
    params = head_params()
    features = features_store.get(params)
    assert features.shape[:2] == (2, len(labels))  # the image and its mirror image
    train, val = np.arange(0, 24, 2), np.arange(1, 24, 2)
    result = fit_head(
        params,
        features=features,
        labels=labels,
        train_idx=train,
        val_idx=val,
        num_classes=2,
        metric=ACCURACY,
        seed=0,
        keep_weights=True,
    )
    assert result.kept_score >= 0.75  # ants from bees on 12 photos each, lite0's features

    model = create_model(params, num_classes=2)
    model.load_state_dict(result.state_dict)
    preprocess = Preprocess(LITE0, size=96, device=CPU)
    views = predict_views(
        model, images, preprocess=preprocess, views=feature_views(True), indices=val
    )
    np.testing.assert_allclose(views[0], result.val_probs, atol=1e-4)
    # the mirror view through the full model is the head on the mirrored features
    with torch.no_grad():
        head = torch.nn.Linear(features.shape[2], 2)
        head.load_state_dict(
            {k.split(".")[-1]: v for k, v in model.classifier.state_dict().items()}
        )
        mirrored = torch.softmax(head(torch.from_numpy(np.array(features[1, val]))), 1).numpy()
    np.testing.assert_allclose(views[1], mirrored, atol=1e-4)


def test_features_are_computed_once_and_a_changed_image_gets_new_ones(store, photos, tmp_path):
    data, _, _ = photos
    copy = tmp_path / "data"
    paths = []
    for f in sorted(data.rglob("*.jpg")):
        target = copy / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        paths.append(str(target))

    def store_for(paths: list[str]) -> FeatureStore:
        cache = build_cache(paths, size=96, cache_dir=tmp_path / "cache")
        return FeatureStore(tmp_path / "features", cache.images, cache.path.name, CPU)

    lines: list[str] = []
    first = store_for(paths)
    a = np.array(first.get(head_params(), log=lines.append))
    b = np.array(store_for(paths).get(head_params(), log=lines.append))
    assert [line.split(":")[0] for line in lines] == ["features computed", "features loaded"]
    np.testing.assert_array_equal(a, b)

    # Another picture under the same name: the cache and the features are made again.
    Path(paths[0]).write_bytes(Path(paths[-1]).read_bytes())
    os.utime(paths[0], ns=(time.time_ns() + 10**9,) * 2)
    changed = store_for(paths)
    assert changed.path(head_params()) != first.path(head_params())
    c = np.array(changed.get(head_params(), log=lines.append))
    assert lines[-1].startswith("features computed")
    np.testing.assert_allclose(c[:, 0], c[:, -1], atol=1e-5)  # row 0 is the last image now
    assert not np.allclose(c[:, 0], a[:, 0], atol=1e-3)


FEATURES_IN_A_PROCESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, torch
    from autoclf.config import TrainParams
    from autoclf.features import FeatureStore
    images = np.load(sys.argv[1], mmap_mode="r")
    store = FeatureStore(Path(sys.argv[2]), images, "cache-name", torch.device("cpu"))
    params = TrainParams(backbone="tf_efficientnet_lite0", kind="head", pretrained=True,
                         image_size=int(sys.argv[3]))
    store.get(params, log=lambda line: print(line, flush=True))
    """
)


def features_process(images: Path, folder: Path, size: int) -> subprocess.Popen:
    env = {**os.environ, "AUTOCLF_THREADS": "fixed"}
    return subprocess.Popen(
        [sys.executable, "-c", FEATURES_IN_A_PROCESS, str(images), str(folder), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_two_workers_compute_the_features_once(store, photos, tmp_path):
    _, images, _ = photos
    np.save(tmp_path / "images.npy", images)
    procs = [features_process(tmp_path / "images.npy", tmp_path / "features", 96) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = sorted(out.strip().split(":")[0] for out, _ in outs)
    assert said == ["features computed", "features loaded"], outs
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1


@pytest.mark.slow
def test_a_killed_feature_build_leaves_nothing_a_resume_would_use(store, photos, tmp_path):
    _, images, _ = photos
    many = np.concatenate([images] * 40)  # 960 images at 224 px: long enough to be killed
    np.save(tmp_path / "images.npy", many)
    proc = features_process(tmp_path / "images.npy", tmp_path / "features", 224)
    lock = list((tmp_path / "features").glob("*.lock"))
    deadline = time.monotonic() + 120
    while not lock and time.monotonic() < deadline:
        time.sleep(0.2)
        lock = (
            list((tmp_path / "features").glob("*.lock")) if (tmp_path / "features").is_dir() else []
        )
    time.sleep(3)  # inside the computation
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "features").glob("*.npy"))

    params = TrainParams(backbone=LITE0, kind="head", pretrained=True, image_size=224)
    store_again = FeatureStore(tmp_path / "features", many[:24], "cache-name", CPU)
    lines: list[str] = []
    features = store_again.get(params, log=lines.append)  # the lock went with the process
    assert lines[0].startswith("features computed") and features.shape[1] == 24


def test_lp_ft_starts_the_fine_tune_from_the_probe_head(store, photos):
    """With LP-FT, a fine-tune's first model is the body with the head fitted on its
    features: trained at a negligible learning rate, it predicts what that head predicts."""
    _, images, labels = photos
    params = head_params()

    feats = pooled_features(LITE0, images, size=96, views=feature_views(True), device=CPU)
    train, val = np.arange(0, 24, 2), np.arange(1, 24, 2)
    head = train_head(params, features=feats, labels=labels, train_idx=train, num_classes=2, seed=0)
    with torch.no_grad():
        probe = torch.softmax(head(torch.from_numpy(feats[0, val])), 1).numpy()
    tune = TrainParams(
        backbone=LITE0,
        pretrained=True,
        image_size=96,
        lr=1e-12,
        head_lr_mult=1.0,
        freeze_bn=True,
        epochs=1,
        batch_size=4,
        hflip=False,
    )
    common = dict(
        images=images,
        labels=labels,
        train_idx=train,
        val_idx=val,
        num_classes=2,
        metric=ACCURACY,
        seed=0,
        device=CPU,
    )
    started = fit(tune, head=head, **common)
    np.testing.assert_allclose(started.val_probs, probe, atol=1e-3)
    fresh = fit(tune, **common)  # a zero head: every class equally likely
    np.testing.assert_allclose(fresh.val_probs, 0.5, atol=1e-3)


# --- end to end --------------------------------------------------------------------------

HEAD_SPACE = """
params:
  kind: head
  backbone: tf_efficientnet_lite0
  pretrained: true
  image_size: 64
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  epochs: 20
sampler: {name: random}
pruner: {name: none}
"""


@pytest.mark.slow
def test_a_head_only_member_reloads_in_a_fresh_process_and_predicts_as_finalize_did(
    store, photos, tmp_path
):
    from tests.conftest import autoclf

    data, _, _ = photos
    (tmp_path / "space.yaml").write_text(HEAD_SPACE)
    common = ("--study", "h", "--studies-dir", str(tmp_path / "studies"))
    args = ("search", str(data), *common, "--space", "space.yaml", "--trials", "3")
    out = autoclf(*args, "--folds", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    study = tmp_path / "studies" / "h"
    logs = [(study / "trials" / str(n) / "log.txt").read_text() for n in range(3)]
    assert [log.count("features computed") for log in logs] == [1, 0, 0], logs
    assert all(log.count("features loaded") == 2 for log in logs[1:]), logs  # one per fold

    out = autoclf("finalize", *common, "--test", str(data), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    manifest = json.loads((study / "final" / "manifest.json").read_text())
    assert {m["params"]["kind"] for m in manifest["members"]} == {"head"}
    # tried under the two views its head trained on (the image and its mirror image) alone
    for member in manifest["members"]:
        assert set(member["views"]) <= {"identity", "hflip"}
        assert (study / "final" / "members" / str(member["trial"]) / "oof_views2.npy").is_file()
    summary = json.loads((study / "final" / "summary.json").read_text())
    test = summary["test"]
    assert test["accuracy"] >= 0.75, test  # the images it learned from, 64 px
    out = autoclf("predict", str(data), *common, "--out", "again.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert (tmp_path / "again.csv").read_text() == (study / "final" / "predictions.csv").read_text()


MIXED_SPACE = """
params:
  kind: {type: categorical, choices: [head, finetune]}
  backbone: tf_efficientnet_lite0
  pretrained: true
  image_size: 64
  batch_size: 8
head:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  epochs: 20
finetune:
  lr: 5.0e-5
  head_lr_mult: 30.0
  freeze_bn: true
  epochs: 2
  keep: last
  lp_ft: true
sampler: {name: random}
pruner: {name: none}
"""


@pytest.mark.slow
def test_a_mixed_search_runs_both_kinds_on_one_set_of_features(store, photos, tmp_path):
    from tests.conftest import autoclf

    data, _, _ = photos
    (tmp_path / "space.yaml").write_text(MIXED_SPACE)
    common = ("--study", "m", "--studies-dir", str(tmp_path / "studies"))
    args = ("search", str(data), *common, "--space", "space.yaml", "--trials", "5")
    out = autoclf(*args, "--folds", "2", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    study = tmp_path / "studies" / "m"
    logs = [(study / "trials" / str(n) / "log.txt").read_text() for n in range(5)]
    tunes = [log for log in logs if "'kind': 'finetune'" in log]
    assert 0 < len(tunes) < 5, "random sampling over 5 trials gave one kind only"
    # LP-FT fine-tunes use the head-only trials' features: computed once for the study.
    assert sum(log.count("features computed") for log in logs) == 1, logs
    assert all(log.count("features ") == 2 for log in tunes), tunes  # one per fold
    assert all("'lp_ft': True" in log for log in tunes)


def test_a_vit_style_body_gives_features_at_the_trial_size(tmp_path, monkeypatch):
    """ViT-style models are built for one input size: the features' body at the trial's, not
    timm's default 224 (test_vit's pretrained size is 160)."""
    import timm

    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path))
    weights = timm.create_model("test_vit").state_dict()
    pretrained._store(weights, tmp_path / "test_vit.safetensors", source="test", source_sha256="")
    images = np.zeros((3, 160, 160, 3), np.uint8)
    features = pooled_features("test_vit", images, size=160, views=feature_views(False), device=CPU)
    assert features.shape[:2] == (1, 3) and np.isfinite(features).all()


def test_a_head_decays_its_weight_but_not_its_bias(monkeypatch):
    """As the doc says and a fine-tune's optimiser does."""
    made = []
    real = torch.optim.AdamW

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    params = TrainParams(backbone="test_resnet", kind="head", weight_decay=0.5, epochs=1)
    features = np.random.default_rng(0).normal(size=(1, 16, 4)).astype(np.float32)
    labels = np.arange(16) % 2
    train_head(
        params, features=features, labels=labels, train_idx=np.arange(16), num_classes=2, seed=0
    )
    decay = {tuple(p.shape): g["weight_decay"] for g in made[0].param_groups for p in g["params"]}
    assert decay == {(2, 4): 0.5, (2,): 0.0}
