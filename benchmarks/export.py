"""CPU latency per image: an exported ensemble in onnxruntime against autoclf's Predictor.

Both start from the same uint8 (N, S, S, 3) pixels, the study's cached training images (decoding
and the square resize are the same work for both and are left out), and end with the vote's
probabilities. Batch 1 (a service answering one request at a time) and batch 32; the same
thread count for torch and onnxruntime; best of --runs, interleaved so drift hits both alike.

    autoclf export --study hym --studies-dir /tmp/hym/studies     # writes final/model.onnx
    python benchmarks/export.py --study hym --studies-dir /tmp/hym/studies [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from autoclf.data.cache import build_cache
from autoclf.predictor import Predictor
from autoclf.study import open_study_dir


def per_image(run, pixels: np.ndarray, batch: int) -> float:
    """Seconds per image to run ``run`` over ``pixels`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        run(pixels[i : i + batch])
    return (time.perf_counter() - t0) / len(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--studies-dir", default="studies")
    parser.add_argument("--model", default=None, help="default studies/NAME/final/model.onnx")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--images", type=int, default=64, help="images per timed run")
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    files = open_study_dir(args.studies_dir, args.study)
    predictor = Predictor(files.dir / "final", device="cpu")
    model = Path(args.model) if args.model else files.dir / "final" / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    cache = build_cache(
        files.index.paths, size=predictor.image_size, cache_dir=files.dir / "cache"
    ).images
    pixels = np.ascontiguousarray(cache[: args.images])

    def onnx(x: np.ndarray) -> np.ndarray:
        return session.run(["probs"], {"pixels": np.ascontiguousarray(x)})[0]

    def autoclf(x: np.ndarray) -> np.ndarray:
        return predictor.predict_pixels(x)

    diff = float(np.abs(onnx(pixels) - autoclf(pixels)).max())  # also the warm-up
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.runs):
        for batch in (1, 32):
            for name, run in (("onnxruntime", onnx), ("autoclf", autoclf)):
                t = per_image(run, pixels, batch)
                best[name, batch] = min(best.get((name, batch), np.inf), t)

    meta = json.loads(model.with_suffix(".json").read_text())
    members = "; ".join(
        f"{m['backbone']} {m['input_size']} px × {m['models']} model(s) × {len(m['views'])} view(s)"
        for m in meta["members"]
    )
    print(
        f"{model} ({model.stat().st_size / 1e6:.1f} MB): {members}; {meta['vote']} vote; "
        f"input {predictor.image_size} px"
    )
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}, {args.images} images, best of "
        f"{args.runs}; largest difference on them {diff:.2g}"
    )
    print("\n| batch | autoclf ms/image | onnxruntime ms/image | autoclf / onnxruntime |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        a, o = best["autoclf", batch] * 1e3, best["onnxruntime", batch] * 1e3
        print(f"| {batch} | {a:.1f} | {o:.1f} | {a / o:.2f} |")


if __name__ == "__main__":
    main()
