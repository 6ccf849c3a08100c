"""Training steps when the cores are not free: autoclf's thread setup against torch's default.

Each measurement is a child process that builds a model the way the trainer does
(channels_last, autoclf's optimiser), warms up, waits until every process of the run is
ready, then counts training steps (zero_grad, forward, loss, backward, step) for
``--seconds``. Three situations, each with every core given to each training process:

- alone: one training process;
- busy: one training process next to a busy Python loop (``while True: pass``);
- two: two training processes at once (two searches, or finalize beside a search).

A setup: ``autoclf`` is what a search worker does (``autoclf.threads.limit_threads``, then
``follow_free_cores`` at every step, which drops to fewer threads while other processes take
cores); ``torch default`` sets the thread count and nothing else; ``--setup KEY=VALUE`` runs
torch's default with OpenMP variables of your choosing (e.g. ``OMP_WAIT_POLICY=PASSIVE``).
Every run is a fresh process, as a worker is. The table gives the median steps/s of
``--reps`` runs with their range, and the ratios the goals are about: busy / alone, and (two
processes together) / alone. Measurements are only worth something on an otherwise idle
machine.

    python benchmarks/threads.py                 # about 12 minutes on 2 cores, or with
    python benchmarks/threads.py --setup OMP_WAIT_POLICY=PASSIVE     # the passive policy too
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (backbone, image size, batch): the tiny space's models, and one pretrained-size model.
CASES = [
    ("test_resnet", 32, 32),
    ("test_efficientnet", 32, 32),
    ("efficientnet_b0", 128, 16),
]
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
LOADS = ("alone", "busy", "two")


def child(backbone: str, size: int, batch: int, threads: int, seconds: float) -> None:
    """One training process: build, warm up, say ready, wait for go, count steps."""
    autoclf_setup = os.environ.get("BENCH_AUTOCLF") == "1"
    import torch

    from autoclf.config import TrainParams
    from autoclf.models import MEMORY_FORMAT, create_model
    from autoclf.optim import build_optimizer
    from autoclf.threads import follow_free_cores, limit_threads

    if autoclf_setup:
        limit_threads(threads)  # as a search worker does
    else:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = TrainParams(backbone=backbone, image_size=size, optimizer="adamw", lr=1e-3)
    model = create_model(params, num_classes=10).to(memory_format=MEMORY_FORMAT).train()
    opt = build_optimizer(model, params)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=MEMORY_FORMAT)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        follow_free_cores()  # as the trainer does; a no-op unless limit_threads was called
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start)}), flush=True)


def measure(case, env: dict, load: str, *, threads: int, seconds: float) -> float:
    """Steps/s of one training process (for ``two``: of both together)."""
    backbone, size, batch = case
    cmd = [sys.executable, __file__, "--child", backbone, str(size), str(batch), str(threads)]
    cmd.append(str(seconds))
    busy = None
    if load == "busy":
        # A busy loop that ends with this process, however this process ends.
        loop = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
        busy = subprocess.Popen([sys.executable, "-c", loop])
    procs = [
        subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2 if load == "two" else 1)
    ]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"child failed: {' '.join(cmd)}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        total = sum(json.loads(p.stdout.readline())["steps_per_s"] for p in procs)
        for p in procs:
            p.wait()
        return total
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def setups(extra: list[str]) -> dict[str, dict]:
    base = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    out = {
        "torch default": {**base, "BENCH_AUTOCLF": "0"},
        "autoclf": {**base, "BENCH_AUTOCLF": "1"},
    }
    for spec in extra:  # KEY=VALUE[,KEY=VALUE]: torch's setup with these variables
        pairs = dict(item.split("=", 1) for item in spec.split(","))
        out[spec] = {**base, "BENCH_AUTOCLF": "0", **pairs}
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--setup", action="append", default=[], help="KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES))
    args = parser.parse_args()
    cases = [c for c in CASES if c[0] in args.cases.split(",")]
    print(f"{args.threads} threads per training process, {os.cpu_count()} cores; steps/s")
    print()
    print(
        "| backbone | size | batch | setup | alone | next to a busy loop | two at once (sum) "
        "| busy / alone | two / alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        for name, env in setups(args.setup).items():
            runs = {load: [] for load in LOADS}
            for _ in range(args.reps):  # interleaved, so slow drift hits every load alike
                for load in LOADS:
                    runs[load].append(
                        measure(case, env, load, threads=args.threads, seconds=args.seconds)
                    )
            alone = statistics.median(runs["alone"])
            print(
                f"| {case[0]} | {case[1]} | {case[2]} | {name} | {spread(runs['alone'])} "
                f"| {spread(runs['busy'])} | {spread(runs['two'])} "
                f"| **{statistics.median(runs['busy']) / alone:.2f}** "
                f"| **{statistics.median(runs['two']) / alone:.2f}** |",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        backbone, size, batch, threads, seconds = sys.argv[2:7]
        child(backbone, int(size), int(batch), int(threads), float(seconds))
    else:
        main()
