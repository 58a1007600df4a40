#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels the GPU device machine lacks
# into .whl/ (ignored by git), so that scripts/device_check.sh can install them there
# offline. The device image has torch, numpy, safetensors, rich, pyyaml, matplotlib and
# pytest, but not pydantic (nor its own dependencies below); it cannot reach a registry.
#
#   bash scripts/fetch_device_wheels.sh                       # from the repository root
#   PYTHON_VERSIONS=3.12 bash scripts/fetch_device_wheels.sh  # one interpreter version
#
# Carry the folder to the device with `carry: [".whl"]`.
set -euo pipefail

# Python versions of the device image. pydantic_core is a compiled wheel, one per
# interpreter version; the other three are pure Python. /work/.library/device/KINDS.md
# saw Python 3.12.3 on the H200 image (2026-11); 3.11 is kept as a fallback guess. A wheel
# per version is harmless: device_check.sh lets pip pick the one that fits
# (--find-links), so an unused one is never installed.
PYTHON_VERSIONS="${PYTHON_VERSIONS:-3.12 3.11}"
DEST="${DEST:-.whl}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# pydantic and its runtime dependencies, pinned to the versions this project is tested
# with (the .venv here). typing_extensions is on the device already (torch needs it), but
# pydantic 2.14 requires >= 4.16.0 and the image's version is unknown: device_check.sh
# installs this wheel only when the image's is older (a newer typing_extensions is
# backward compatible, so torch is unaffected).
PACKAGES=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing_extensions==4.16.0)

mkdir -p "$DEST"
for version in $PYTHON_VERSIONS; do
    echo "fetching wheels for Python $version into $DEST/"
    "$PYTHON" -m pip download --quiet --only-binary=:all: --no-deps \
        --python-version "$version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$DEST" "${PACKAGES[@]}"
done
echo "wheels in $DEST/:"
ls -1 "$DEST"/*.whl
