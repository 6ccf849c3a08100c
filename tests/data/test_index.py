from __future__ import annotations

import numpy as np
import pytest

from autoclf.data.index import DataIndex, build_index, load_index, save_index
from autoclf.errors import DataError
from tests.conftest import save_image


def test_folder_index_classes_and_counts(image_folder, tmp_path):
    (image_folder / "cat" / ".DS_Store").write_text("junk")
    (image_folder / "dog" / "notes.txt").write_text("not an image")
    index = build_index(image_folder, datasets_dir=tmp_path)
    assert index.classes == ("cat", "dog", "emu")
    assert index.class_counts() == {"cat": 6, "dog": 5, "emu": 4}
    assert all(p.endswith(".png") for p in index.paths)
    assert index.groups is None


def test_folder_with_empty_class_names_it(image_folder, tmp_path):
    (image_folder / "fox").mkdir()
    with pytest.raises(DataError, match="'fox' is empty"):
        build_index(image_folder, datasets_dir=tmp_path)


def test_folder_without_class_folders(tmp_path):
    save_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        build_index(tmp_path / "flat", datasets_dir=tmp_path)


def test_folder_of_splits_is_refused_with_the_split_to_give(tmp_path):
    for split in ("train", "val"):
        for label in ("ants", "bees"):
            save_image(tmp_path / "data" / split / label / "a.png")
    with pytest.raises(DataError, match=r"train/ \(ants, bees\), val/ \(ants, bees\)") as err:
        build_index(tmp_path / "data", datasets_dir=tmp_path)
    assert str((tmp_path / "data" / "train").resolve()) in str(err.value)
    # One of the splits is a folder of classes, and indexes as one.
    assert build_index(tmp_path / "data" / "train", datasets_dir=tmp_path).classes == (
        "ants",
        "bees",
    )


def test_class_named_like_a_split_with_its_images_in_it_is_a_class(tmp_path):
    # Images nested in a class folder stay that class's; "test" holding images is a class.
    save_image(tmp_path / "data" / "test" / "a.png")
    save_image(tmp_path / "data" / "test" / "batch2" / "b.png")
    save_image(tmp_path / "data" / "other" / "sub" / "c.png")
    index = build_index(tmp_path / "data", datasets_dir=tmp_path)
    assert index.class_counts() == {"other": 1, "test": 2}


def test_missing_data_is_named(tmp_path):
    with pytest.raises(DataError, match="nope"):
        build_index(tmp_path / "nope", datasets_dir=tmp_path)


def test_csv_index_with_groups_and_relative_paths(tmp_path):
    for i in range(4):
        save_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,group\nimgs/0.png,b,g1\nimgs/1.png,a,g1\nimgs/2.png,b,g2\nimgs/3.png,a,g3\n"
    )
    index = build_index(csv, datasets_dir=tmp_path)
    assert index.classes == ("a", "b")
    assert index.labels == (1, 0, 1, 0)
    assert index.groups == ("g1", "g1", "g2", "g3")
    assert index.paths[0] == str((tmp_path / "imgs" / "0.png").resolve())


def test_csv_numeric_labels_sort_naturally(tmp_path):
    rows = []
    for i, label in enumerate(["10", "2", "1"]):
        save_image(tmp_path / f"{i}.png", seed=i)
        rows.append(f"{i}.png,{label}")
    (tmp_path / "d.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    assert build_index(tmp_path / "d.csv", datasets_dir=tmp_path).classes == ("1", "2", "10")


@pytest.mark.parametrize(
    "body,message",
    [
        ("file,label\na.png,x\n", r"missing column\(s\) \['path'\]"),
        ("path,label\nmissing.png,x\n", "missing.png"),
        ("path,label\na.png,x\na.png,y\n", "duplicate path 'a.png'"),
        ("path,label\n", "no rows"),
        ("path,label,group\na.png,x,\n", "empty group"),
    ],
)
def test_csv_problems_are_named(tmp_path, body, message):
    save_image(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        build_index(tmp_path / "d.csv", datasets_dir=tmp_path)


def test_digits_train_and_test_are_disjoint_images_on_disk(tmp_path):
    train = build_index("digits", datasets_dir=tmp_path)
    test = build_index("digits-test", datasets_dir=tmp_path)
    assert (len(train), len(test)) == (1437, 360)
    assert train.classes == test.classes == tuple(str(d) for d in range(10))
    assert not set(train.paths) & set(test.paths)
    assert all(p.endswith(".png") for p in train.paths)
    # A second call reuses the files instead of writing them again.
    before = (tmp_path / "digits" / "COMPLETE").stat().st_mtime_ns
    build_index("digits", datasets_dir=tmp_path)
    assert (tmp_path / "digits" / "COMPLETE").stat().st_mtime_ns == before


def test_save_and_load_round_trip(tmp_path):
    save_image(tmp_path / "a,b.png")  # a comma in the name must survive the CSV
    save_image(tmp_path / "c.png")
    (tmp_path / "d.csv").write_text('path,label,group\n"a,b.png",x,g\nc.png,y,h\n')
    index = build_index(tmp_path / "d.csv", datasets_dir=tmp_path)
    folds = np.array([1, 0])
    save_index(index, folds, tmp_path / "index.csv")
    loaded, loaded_folds = load_index(tmp_path / "index.csv")
    assert loaded == index
    assert loaded_folds.tolist() == [1, 0]


def test_the_class_order_is_saved_not_sorted_again(tmp_path):
    # The saved order is what the study's models output: a later sort (a new version's, or
    # another process's) must not rename their outputs.
    index = DataIndex(paths=("1.png", "2.png", "3.png"), labels=(0, 1, 0), classes=("b", "a"))
    save_index(index, np.array([0, 1, 1]), tmp_path / "index.csv")
    assert load_index(tmp_path / "index.csv")[0] == index


def test_a_table_from_before_class_index_is_in_natural_order(tmp_path):
    (tmp_path / "index.csv").write_text("path,label,group,fold\n1.png,b10,,0\n2.png,b9,,1\n")
    loaded, folds = load_index(tmp_path / "index.csv")
    assert loaded.classes == ("b9", "b10") and loaded.labels == (1, 0)
    assert folds.tolist() == [0, 1]


@pytest.mark.parametrize(
    "rows, error",
    [
        ("1.png,a,,0,0\n2.png,a,,1,1\n", r"line 3: class 'a' has class_index '1', but '0'"),
        ("1.png,a,,0,0\n2.png,b,,1,2\n", r"class_index column is not 0\.\.1"),
    ],
)
def test_a_class_index_that_does_not_fit_is_named(tmp_path, rows, error):
    (tmp_path / "index.csv").write_text("path,label,group,fold,class_index\n" + rows)
    with pytest.raises(DataError, match=error):
        load_index(tmp_path / "index.csv")


CLASS_ORDER = """
import sys
from autoclf.data.index import build_index, load_index
if sys.argv[1] == "build":
    print(build_index(sys.argv[2], datasets_dir=sys.argv[3]).classes)
else:
    print(load_index(sys.argv[2])[0].classes)
"""


def test_classes_alike_but_for_case_or_zeros_keep_one_order_in_every_process(tmp_path):
    """Python's string hashes change with each process: the class order (what each output of
    the model means) must not depend on a set's order, in the search or in predict."""
    import os
    import subprocess
    import sys

    labels = ["cat", "Cat", "class_01", "class_1", "dog", "m²"]  # ² is a digit, not a decimal
    rows = []
    for i, label in enumerate(labels):
        save_image(tmp_path / f"{i}.png", seed=i)
        rows.append(f"{i}.png,{label}")
    (tmp_path / "d.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    index = build_index(tmp_path / "d.csv", datasets_dir=tmp_path)
    assert index.classes == ("Cat", "cat", "class_01", "class_1", "dog", "m²")
    save_index(index, np.zeros(len(labels), dtype=int), tmp_path / "index.csv")
    seen = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        for how, path in (("build", tmp_path / "d.csv"), ("load", tmp_path / "index.csv")):
            done = subprocess.run(
                [sys.executable, "-c", CLASS_ORDER, how, str(path), str(tmp_path)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            seen.add(done.stdout.strip())
    assert seen == {str(index.classes)}
