"""A folder of photos with every kind of odd file the real world has among them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tests.conftest import photo

PHOTOS = 14  # per class: photographs are ≥ 90% of the images, as in a real set


def messy_folder(root: Path) -> dict[str, Path]:
    """Two classes of photos with every kind of odd file among them; returns the odd ones."""
    for c, name in enumerate(("ants", "bees")):
        (root / name).mkdir(parents=True)
        for i in range(PHOTOS):
            Image.fromarray(photo(100 * c + i)).save(root / name / f"{i}.jpg", quality=90)
    odd = {
        "placeholder": root / "ants" / "imageNotFound.gif",
        "rotated": root / "ants" / "phone.jpg",
        "cmyk": root / "ants" / "cmyk.jpg",
        "copy": root / "bees" / "copy.jpg",
        "gray": root / "bees" / "gray.png",
        "deep": root / "bees" / "deep.png",
        "truncated": root / "bees" / "truncated.jpg",
        "empty": root / "bees" / "empty.jpg",
        "text": root / "bees" / "notes.jpg",
        "corrupt": root / "bees" / "corrupt.png",
    }
    sign = Image.new("P", (120, 90), 0)  # a palette graphic: "image not found"
    sign.putpalette([255, 255, 255, 200, 0, 0, 90, 90, 90] + [0] * 759)
    ImageDraw.Draw(sign).rectangle((10, 10, 110, 80), outline=1, width=4)
    ImageDraw.Draw(sign).text((25, 38), "not found", fill=2)
    sign.save(odd["placeholder"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60×40, shown 40×60
    Image.fromarray(photo(90, size=(60, 40))).save(odd["rotated"], exif=exif)
    Image.fromarray(photo(91)).convert("CMYK").save(odd["cmyk"])
    buffer = io.BytesIO()  # ants/0.jpg, resized and re-compressed, filed under bees
    Image.open(root / "ants" / "0.jpg").resize((90, 67)).save(buffer, "JPEG", quality=60)
    odd["copy"].write_bytes(buffer.getvalue())
    Image.fromarray(photo(92)[:, :, 1]).save(odd["gray"])
    Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)).save(
        odd["deep"]
    )
    Image.fromarray(photo(93)).save(odd["truncated"])
    odd["truncated"].write_bytes(odd["truncated"].read_bytes()[:1500])
    odd["empty"].write_bytes(b"")
    odd["text"].write_text("shopping list: sugar, more sugar\n")
    odd["corrupt"].write_bytes(np.random.default_rng(0).bytes(3000))
    return odd
