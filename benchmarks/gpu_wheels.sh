#!/usr/bin/env bash
# Download, here, the wheels of the packages fss needs that the lent GPU machine's image lacks (its
# Python is 3.12 and has torch, Lightning, torchmetrics, timm, OpenCV; docs/performance.md), into .whl/
# (git-ignored), for `run` to carry: benchmarks/gpu_check.sh installs them there. About 9 MB.
# The versions are those of this machine's venv (pydantic and pydantic-core must match each other).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    jsonargparse==4.53.0 docstring-parser typeshed-client importlib-resources \
    albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2 \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection==0.4.2 pycocotools==2.0.11
ls .whl
