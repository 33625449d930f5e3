#!/bin/sh
# Gather what benchmarks/gpu_check.sh needs on a GPU machine that has no libjpeg headers and no
# internet, into one folder to carry (default: gpu_bundle/ at the repository root, ignored by git):
#   jpeg/include, jpeg/lib   libjpeg-turbo's headers and libjpeg.so* (from this machine, or from
#                            `apt-get download libjpeg62-turbo-dev libjpeg62-turbo` + `dpkg -x`)
#   ext/funloader/           the C extension prebuilt for Python 3.12 (the H200 image's), when a
#                            python3.12 is here: the fallback if it cannot be built there
#   data/                    the shared test data the checks use (photos, Fashion-MNIST, dlib_johns)
# Usage: benchmarks/gpu_bundle.sh [FOLDER]   (about 31 MB; the device tool carries at most 64 MiB)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/gpu_bundle}
mkdir -p "$out/jpeg/include" "$out/jpeg/lib"
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
if [ -f /usr/include/jpeglib.h ] && ls /usr/lib/"$multiarch"/libjpeg.so.62* >/dev/null 2>&1; then
    cp /usr/include/jpeglib.h /usr/include/jmorecfg.h /usr/include/jerror.h "$out/jpeg/include/"
    cp "/usr/include/$multiarch/jconfig.h" "$out/jpeg/include/" 2>/dev/null || cp /usr/include/jconfig.h "$out/jpeg/include/"
    cp -P /usr/lib/"$multiarch"/libjpeg.so* "$out/jpeg/lib/"
else
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download libjpeg62-turbo-dev libjpeg62-turbo)
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    cp "$tmp"/root/usr/include/j*.h "$out/jpeg/include/"
    cp "$tmp/root/usr/include/$multiarch/jconfig.h" "$out/jpeg/include/"
    cp -P "$tmp"/root/usr/lib/"$multiarch"/libjpeg.so* "$out/jpeg/lib/"
    rm -rf "$tmp"
fi
python312=${PYTHON312:-$(command -v python3.12 || true)}
if [ -n "$python312" ] && paths=$("$python312" -c "import sysconfig; print(sysconfig.get_paths()['include'], sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null); then
    # every C file of funloader/csrc is extension source (setup.py's flags; no setuptools needed)
    set -- $paths
    mkdir -p "$out/ext/funloader"
    "${CC:-gcc}" -shared -fPIC -O3 -std=c11 -pthread -I"$1" -I"$out/jpeg/include" -I"$repo/funloader/csrc" \
        "$repo"/funloader/csrc/*.c -L"$out/jpeg/lib" -ljpeg -Wl,-rpath,'$ORIGIN/../gpu_bundle/jpeg/lib' \
        -o "$out/ext/funloader/_jpegdct$2" \
        || echo "gpu_bundle: no prebuilt extension (the python3.12 build failed); gpu_check builds it there"
else
    echo "gpu_bundle: no python3.12 here (set PYTHON312=...): gpu_check will build the extension there"
fi
shared=${FUNLOADER_SHARED_DATA:-$repo/../shared/data}
[ -d "$shared" ] || shared=/work/shared/data
mkdir -p "$out/data/labelled"
cp "$shared/MANIFEST.tsv" "$shared/README.md" "$out/data/"
cp -r "$shared/photos" "$out/data/"
cp -r "$shared/labelled/fashion_mnist" "$shared/labelled/dlib_johns" "$out/data/labelled/"
du -sh "$out"
