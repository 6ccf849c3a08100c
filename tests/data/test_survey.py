"""Looking at the data: every odd file the issue lists, made here, and how the survey sees it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from autoclf.data.index import build_index
from autoclf.data.survey import survey
from tests.conftest import photo
from tests.messy import PHOTOS, messy_folder


def test_survey_sees_every_odd_file_for_what_it_is(tmp_path):
    odd = messy_folder(tmp_path / "data")
    index = build_index(tmp_path / "data", datasets_dir=tmp_path)
    found = survey(index, source="data")
    by_path = {Path(im.path).name: im for im in found.images}

    assert found.class_counts() == {"ants": PHOTOS + 3, "bees": PHOTOS + 7}
    undecodable = {"truncated", "empty", "text", "corrupt"}
    assert {im.path for im in found.bad} == {str(odd[k]) for k in undecodable}
    assert all(im.path in im.problem for im in found.bad)  # each reason names its file

    modes = found.counted("mode")
    assert modes["CMYK"] == modes["I;16"] == modes["L"] == modes["P"] == 1
    phone = by_path["phone.jpg"]
    assert phone.rotated and (phone.width, phone.height) == (40, 60)
    assert sum(im.rotated for im in found.images) == 1

    flagged = {Path(found.images[i].path).name: reasons for i, reasons in found.odd()}
    assert list(flagged) == ["imageNotFound.gif"]  # photos, gray, CMYK, 16-bit: nothing odd
    reasons = " ".join(flagged["imageNotFound.gif"])
    assert "the only GIF file among" in reasons and "placeholder" in reasons

    paths = [im.path for im in found.images]
    pair = (paths.index(str(tmp_path / "data" / "ants" / "0.jpg")), paths.index(str(odd["copy"])))
    assert found.duplicates.groups == (tuple(sorted(pair)),)
    assert found.duplicates.spanning_classes([im.label for im in found.images])


def test_survey_reports_imbalance_largest_over_smallest(tmp_path):
    for i in range(8):
        Image.fromarray(photo(i)).save(_mkdir(tmp_path / "d" / "many") / f"{i}.png")
    Image.fromarray(photo(50)).save(_mkdir(tmp_path / "d" / "few") / "0.png")
    Image.fromarray(photo(51)).save(tmp_path / "d" / "few" / "1.png")
    found = survey(build_index(tmp_path / "d", datasets_dir=tmp_path), source="d")
    assert found.imbalance == 4.0 and not found.bad and not found.duplicates.groups


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
