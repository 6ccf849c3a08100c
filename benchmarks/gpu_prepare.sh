#!/usr/bin/env bash
# Prepare benchmarks/gpu_check.py for a GPU machine that has no network: run HERE (where the
# package index answers), from the repository root; then carry the two folders it fills.
#
#   bash benchmarks/gpu_prepare.sh
#
# .gpu_wheels/  the wheels that the GPU image (Python 3.12, torch, torchvision, timm, numpy,
#               scipy, opencv-python-headless, pyyaml, rich, scikit-learn, safetensors, tqdm,
#               packaging, markupsafe) lacks: optuna, albumentations and what they need, for
#               CPython 3.12 on manylinux x86_64, each with --no-deps (torch is never pulled),
#               at the versions of this repository's development machine. autoclf itself
#               needs no install: gpu_check.py runs it from the checkout.
# .gpu_data/    hymenoptera/train (245 photos, 26 MiB) where this checkout has it beside it, so
#               the check runs on real photos there (else gpu_check.py makes synthetic ones).
#
# Both folders are git-ignored. benchmarks/README.md ("GPU check") has the one command to run
# on the GPU machine, with carry [".gpu_wheels", ".gpu_data"].
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=.gpu_wheels
# Pinned to what the development machine runs (pip list), so the GPU run uses the code paths
# that the CPU tests passed with. typing_extensions: pydantic and SQLAlchemy need a recent one.
PACKAGES=(
    optuna==5.1.0
    alembic==1.20.1
    SQLAlchemy==2.1.9
    colorlog==6.12.0
    Mako==1.4.3
    albumentations==2.0.8
    albucore==0.0.24
    pydantic==2.14.4
    pydantic_core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing_extensions==4.16.0
    stringzilla==5.3.2
    simsimd==6.5.16
)

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$WHEELS" "${PACKAGES[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

# Every wheel must install on CPython 3.12 x86_64: pure Python, abi3, or cp312.
bad=$(find "$WHEELS" -name '*.whl' | grep -vE -- '-(py3|py2\.py3|cp312)-(none|abi3|cp312)-(any|.*x86_64)\.whl$' || true)
if [[ -n "$bad" ]]; then
    echo "not for CPython 3.12 x86_64: $bad" >&2
    exit 1
fi

DATA=""
for candidate in shared/datasets/hymenoptera/train ../shared/datasets/hymenoptera/train; do
    if [[ -d $candidate ]]; then DATA=$candidate; break; fi
done
rm -rf .gpu_data
if [[ -n $DATA ]]; then
    mkdir -p .gpu_data/hymenoptera
    cp -r "$DATA" .gpu_data/hymenoptera/train
else
    echo "no hymenoptera/train here: gpu_check.py will make synthetic photos there" >&2
fi

ls -1 "$WHEELS"
du -sh "$WHEELS" .gpu_data 2>/dev/null || du -sh "$WHEELS"
