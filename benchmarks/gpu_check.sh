#!/bin/sh
# GPU validation in one command: benchmarks/gpu_check.sh OUTDIR [gpu_check.py options]
# Writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.log (see benchmarks/gpu_check.py and
# benchmarks/README.md, "GPU check"). Uses the folder made by benchmarks/gpu_bundle.sh when it is
# there (libjpeg-turbo headers and library, a prebuilt extension, the shared test data).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
bundle=${FUNLOADER_GPU_BUNDLE:-$repo/gpu_bundle}
if [ -f "$bundle/jpeg/include/jpeglib.h" ]; then
    export JPEG_INCLUDE_DIR="$bundle/jpeg/include" JPEG_LIBRARY_DIR="$bundle/jpeg/lib"
    export LD_LIBRARY_PATH="$bundle/jpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -f "$bundle/data/MANIFEST.tsv" ] && [ -z "${FUNLOADER_SHARED_DATA:-}" ]; then
    export FUNLOADER_SHARED_DATA="$bundle/data"
fi
export FUNLOADER_GPU_BUNDLE="$bundle" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$repo/benchmarks/gpu_check.py" "$@"
