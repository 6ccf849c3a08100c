"""``autoclf inspect`` as a user runs it: the terminal summary and the offline HTML page."""

from __future__ import annotations

import re

from autoclf import atomic
from tests.browser import render
from tests.conftest import autoclf, save_image
from tests.messy import PHOTOS, messy_folder


def test_inspect_summarises_in_the_terminal_and_writes_an_offline_page(tmp_path):
    odd = messy_folder(tmp_path / "data")
    out = autoclf(
        "inspect", str(tmp_path / "data"), "--html", "look.html", "--samples", "3", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout
    assert re.search(rf"ants\s+{PHOTOS + 3}\s", text) and re.search(rf"bees\s+{PHOTOS + 7}\s", text)
    assert "imbalance: 1.24:1" in text
    assert "4 file(s) cannot be decoded" in text
    for key in ("truncated", "empty", "text", "corrupt"):
        assert str(odd[key]) in text
    assert f"stands out: {odd['placeholder']}: the only GIF file" in text
    assert "duplicates: 2 images in 1 set(s)" in text and "carry different labels" in text

    page = (tmp_path / "look.html").read_text()
    assert f"report: {tmp_path / 'look.html'}" in text
    # Offline: plotly's code is in the page, and nothing is fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=['\"]?(https?:)?//", page)
    assert "Plotly.newPlot" in page and len(page) > 3_000_000
    # 3 samples × 2 classes, the placeholder, and the duplicate pair side by side.
    assert page.count("data:image/jpeg;base64,") == 3 * 2 + 1 + 2
    for heading in ("Class distribution", "Image sizes", "Problems", "Samples", "Duplicates"):
        assert f"<h2>{heading}" in page
    assert str(odd["copy"]) in page and str(odd["corrupt"]) in page


def test_class_names_and_paths_print_as_written_not_read_as_markup(tmp_path):
    # Rich read "[old]" as a style and dropped it: `cats [old]` printed as `cats `.
    data = tmp_path / "data"
    for c, name in enumerate(("cats [old]", "dogs [red]")):
        for i in range(3):
            save_image(data / name / f"{i}.png", seed=10 * c + i)
    (data / "dogs [red]" / "[b]broken.png").write_bytes(b"not an image")
    done = autoclf("inspect", str(data), "--html", "look.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert re.search(r"cats \[old\]\s+3\s", out) and re.search(r"dogs \[red\]\s+4\s", out)
    assert "1 file(s) cannot be decoded" in out
    assert str(data / "dogs [red]" / "[b]broken.png") in out.replace("\n", "")


def test_a_folder_given_for_the_page_gets_the_default_name_in_it(tmp_path):
    # A folder was a traceback (IsADirectoryError) after every image was decoded; now it takes
    # the default name, as `export --out` does (`predict --out` and `report --out` too).
    for c, name in enumerate(("a", "b")):
        save_image(tmp_path / "data" / name / "0.png", seed=c)
    (tmp_path / "pages").mkdir()
    done = autoclf("inspect", "data", "--html", "pages", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert (tmp_path / "pages" / "inspect-data.html").stat().st_size > 100_000
    assert f"report: {tmp_path / 'pages' / 'inspect-data.html'}" in done.stdout
    default = tmp_path / "final" / "predictions-val.csv"
    assert atomic.target(str(tmp_path / "pages"), default) == tmp_path / "pages" / default.name
    assert atomic.target(str(tmp_path / "p.csv"), default) == tmp_path / "p.csv"
    assert atomic.target(None, default) == default


def test_a_class_name_shows_in_the_charts_as_written(tmp_path):
    # Plotly reads <b>, <br> and entities in a label as its markup: `a<b>c` showed as a bold c.
    for c, name in enumerate(("a<b>c", "x&amp;y")):
        for i in range(2):
            save_image(tmp_path / "data" / name / f"{i}.png", seed=10 * c + i)
    page = tmp_path / "look.html"
    done = autoclf("inspect", "data", "--html", str(page), cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    found = render(page, tmp_path)
    assert found["errors"] == [] and found["drawn"] == found["plots"] > 0
    assert found["xticks"][0] == ["a<b>c", "x&amp;y"]  # the class distribution's bars
