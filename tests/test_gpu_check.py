"""benchmarks/gpu_check.py's dry run: every section of the GPU check at toy size on the CPU, so
the script that a lent GPU runs once cannot rot in between."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("throughput", "data", "amp", "oom", "workers", "default_space")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    report = (out / "gpu_check.md").read_text()
    results = json.loads((out / "gpu_check.json").read_text())
    sections = results["sections"]
    assert results["meta"]["dry_run"] is True
    for key in SECTIONS:
        assert sections[key]["status"] == "ok", (key, sections[key]["status"], tail)

    throughput = sections["throughput"]["models"]
    assert set(throughput) == {"test_resnet", "test_efficientnet"}
    for row in throughput.values():
        assert positive(row["trainer_img_s"]) and positive(row["bare_img_s"]), row
        assert positive(row["ratio"]), row

    data = sections["data"]
    assert positive(data["loader_img_s"]["cached"]) and positive(data["loader_img_s"]["decoded"])
    for row in data["models"].values():
        for name in ("compute_s", "cached_epoch_s", "decoded_epoch_s", "cached_busy"):
            assert positive(row[name]), (name, row)

    amp = sections["amp"]["runs"]
    assert {"fp32", "amp"} <= set(amp)
    for run in amp.values():
        assert positive(run["final_loss"]) and positive(run["epoch_s"]), run
        # What the probes inside trainer.fit saw: the loader's uint8 batch, channels_last in.
        probe = run["probe"]
        assert probe["batch_dtype"] == "torch.uint8", probe
        assert probe["input_channels_last"] and probe["weights_channels_last"], probe

    oom = sections["oom"]
    assert oom["state"] == "COMPLETE", oom
    assert oom["retried"] and oom["micro_batch"] == oom["batch"] // 2, oom
    assert "simulated" in oom["mode"]
    memory = oom["memory"]
    assert memory["trials"] >= 2 and set(memory["states"]) == {"COMPLETE"}, memory
    assert positive(memory["first"]["rss_mib"]) and positive(memory["last"]["rss_mib"])

    workers = sections["workers"]
    for n in ("1", "2"):
        run = workers["runs"][n]
        assert run["finished"] >= 1 and positive(run["trials_per_hour"]), run
        assert not run["gave_up"], run
    assert workers["runs"]["2"]["slots"] == ["cpu0", "cpu1"]
    assert workers["seen"] and workers["own_gpu_only"] is True, workers["seen"]

    search = sections["default_space"]
    assert search["exit_code"] == 0 and search["finished"] >= 1, search
    assert positive(search["s_per_epoch"]) and positive(search["trials_per_hour"]), search

    assert "DRY RUN" in report
    for title in (
        "Throughput",
        "Data never the bottleneck",
        "AMP",
        "out of memory",
        "Workers",
        "default space",
    ):
        assert title in report, title
    assert "error:" not in report and "skipped:" not in report
