"""The HTML page of ``autoclf inspect``: what the data looks like, and what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoclf import atomic
from autoclf.data.images import load_rgb
from autoclf.data.survey import Survey
from autoclf.metrics import choose_metric
from autoclf.reports.html import escape, figure, page, plotly_text, table, thumbnail, tile

THUMBNAIL = 128  # px, the longer side of a gallery image

MAX_POINTS = 5000  # image-size scatter: a sample beyond this many images
MAX_PAIRS = 60  # duplicate pairs shown side by side


def write_inspect_report(
    survey: Survey, target: str | Path, *, samples_per_class: int = 8, seed: int = 0
) -> Path:
    atomic.write_text(target, render(survey, samples_per_class=samples_per_class, seed=seed))
    return Path(target)


def render(survey: Survey, *, samples_per_class: int = 8, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return page(
        f"autoclf inspect: {survey.source}",
        [
            _summary(survey),
            _classes(survey),
            _sizes(survey, rng),
            _problems(survey),
            _samples(survey, samples_per_class, rng),
            _duplicates(survey),
        ],
    )


def _summary(survey: Survey) -> str:
    counts = survey.class_counts()
    dups = survey.duplicates
    rows = [
        ("images", len(survey.images)),
        ("classes", len(survey.classes)),
        ("imbalance (largest / smallest class)", f"{survey.imbalance:.2f} : 1"),
        ("cannot be decoded", len(survey.bad)),
        ("do not look like the rest", len(survey.odd())),
        ("duplicate sets (images)", f"{len(dups.groups)} ({dups.images})"),
        ("stored rotated (EXIF), turned upright", sum(im.rotated for im in survey.images)),
        ("formats", _listed(survey.counted("format"))),
        ("modes", _listed(survey.counted("mode"))),
    ]
    smallest = min(counts, key=counts.get)
    note = (
        f"<p class='warn'>Class {escape(smallest)} has {counts[smallest]} images, "
        f"{survey.imbalance:.1f}× fewer than the largest: --metric auto scores this data by "
        "f1_macro; consider --balance weights or sampler.</p>"
        if choose_metric(counts.values()) == "f1_macro"
        else ""
    )
    return "<h2>Summary</h2>" + table(("", ""), rows) + note


def _classes(survey: Survey) -> str:
    import plotly.graph_objects as go

    counts = survey.class_counts()
    names = [plotly_text(c) for c in counts]
    fig = go.Figure(go.Bar(x=names, y=list(counts.values()), text=list(counts.values())))
    fig.update_layout(
        xaxis_title="class", yaxis_title="images", height=360, margin={"t": 20, "b": 40}
    )
    return "<h2>Class distribution</h2>" + figure(fig)


def _sizes(survey: Survey, rng: np.random.Generator) -> str:
    import plotly.graph_objects as go

    decoded = survey.decoded
    if len(decoded) > MAX_POINTS:
        decoded = [decoded[i] for i in sorted(rng.choice(len(decoded), MAX_POINTS, replace=False))]
    fig = go.Figure()
    for label, name in enumerate(survey.classes):
        ims = [im for im in decoded if im.label == label]
        fig.add_trace(
            go.Scatter(
                x=[im.width for im in ims],
                y=[im.height for im in ims],
                mode="markers",
                name=plotly_text(name),
                text=[plotly_text(Path(im.path).name) for im in ims],
                marker={"opacity": 0.6},
            )
        )
    fig.update_layout(
        xaxis_title="width (px, upright)",
        yaxis_title="height (px)",
        height=420,
        margin={"t": 20},
    )
    sampled = f" (a sample of {MAX_POINTS})" if len(survey.decoded) > MAX_POINTS else ""
    return f"<h2>Image sizes{sampled}</h2>" + figure(fig)


def _problems(survey: Survey) -> str:
    parts = ["<h2>Problems</h2>"]
    bad = survey.bad
    if bad:
        parts.append(
            f"<p class='warn'>{len(bad)} file(s) cannot be decoded; search stops on them "
            "unless given --skip-bad-images.</p>"
        )
        parts.append(table(("file", "why"), ((im.path, im.problem) for im in bad)))
    odd = survey.odd()
    if odd:
        parts.append(f"<p class='warn'>{len(odd)} image(s) do not look like the rest:</p>")
        tiles = []
        for i, reasons in odd:
            im = survey.images[i]
            caption = f"{survey.classes[im.label]}: {Path(im.path).name}"
            tiles.append(
                "<div class='pair'>"
                + tile(_thumb(im.path), caption, title=im.path)
                + f"<div><code>{escape(im.path)}</code><br>{escape('; '.join(reasons))}</div>"
                + "</div>"
            )
        parts.extend(tiles)
    if not bad and not odd:
        parts.append("<p>Every file decodes, and none stands out.</p>")
    return "\n".join(parts)


def _samples(survey: Survey, per_class: int, rng: np.random.Generator) -> str:
    parts = [f"<h2>Samples ({per_class} per class, at random)</h2>"]
    for label, name in enumerate(survey.classes):
        ims = [im for im in survey.decoded if im.label == label]
        chosen = [ims[i] for i in sorted(rng.choice(len(ims), min(per_class, len(ims)), False))]
        tiles = (tile(_thumb(im.path), Path(im.path).name, title=im.path) for im in chosen)
        parts.append(
            f"<h3>{escape(name)} <span class='muted'>({len(ims)} images)</span></h3>"
            f"<div class='grid'>{''.join(tiles)}</div>"
        )
    return "\n".join(parts)


def _duplicates(survey: Survey) -> str:
    found = survey.duplicates
    parts = ["<h2>Duplicates</h2>"]
    if not found.groups:
        parts.append("<p>No exact or near-duplicate images.</p>")
        return "\n".join(parts)
    mixed = found.spanning_classes([im.label for im in survey.images])
    parts.append(
        f"<p>{found.images} images in {len(found.groups)} set(s) of exact or near-identical "
        "images (perceptual hash). <code>autoclf search</code> keeps each set within one fold."
        + (
            f" <span class='warn'>{len(mixed)} set(s) carry different labels.</span>"
            if mixed
            else ""
        )
        + "</p>"
    )
    shown = sorted(found.pairs, key=lambda p: p[2])[:MAX_PAIRS]
    if len(found.pairs) > MAX_PAIRS:
        parts.append(f"<p class='muted'>The {MAX_PAIRS} closest of {len(found.pairs)} pairs.</p>")
    for i, j, bits in shown:
        a, b = survey.images[i], survey.images[j]
        parts.append(
            "<div class='pair'>"
            + tile(_thumb(a.path), survey.classes[a.label], title=a.path)
            + tile(_thumb(b.path), survey.classes[b.label], title=b.path)
            + f"<div>{bits} of 64 hash bits differ<br><code>{escape(a.path)}</code><br>"
            f"<code>{escape(b.path)}</code></div></div>"
        )
    return "\n".join(parts)


def _listed(counts) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.most_common())


def _thumb(path: str) -> str:
    """A gallery tile's image; a large JPEG is decoded at reduced scale for it."""
    return thumbnail(load_rgb(path, min_side=THUMBNAIL), size=THUMBNAIL)
