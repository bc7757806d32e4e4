#!/bin/sh
# Build darkpy-dump (and darkpy-darknet-info) against an existing darknet build.
#
#   DARKNET_DIR=/path/to/darknet tools/build.sh
#
# DARKNET_DIR must hold include/darknet.h and libdarknet.a (darknet's `make` builds
# both). Outputs: tools/build/darkpy-dump, tools/build/darkpy-darknet-info
# (BUILD_DIR=... puts them elsewhere).
# Optional environment, recorded in every case.json a dump writes:
#   DARKNET_NAME   the darknet source, e.g. pjreddie/darknet (default: from the
#                  checkout's git remote, else the directory name); @commit is appended
#   DARKNET_OPTS   the OPTS darknet was compiled with (default: the Makefile's OPTS line;
#                  set it if you ran `make OPTS=...`)
#   DARKNET_LABEL  a short name for the build, e.g. strict or ofast (default: empty)
#   CC             the C compiler (default: cc); use the one darknet was built with
set -eu

: "${DARKNET_DIR:?set DARKNET_DIR to your darknet checkout (with libdarknet.a built)}"
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-cc}

for f in "$DARKNET_DIR/include/darknet.h" "$DARKNET_DIR/libdarknet.a"; do
    if [ ! -f "$f" ]; then
        echo "build.sh: $f is missing (build darknet first: make in $DARKNET_DIR)" >&2
        exit 1
    fi
done

commit=$(git -C "$DARKNET_DIR" rev-parse --short=8 HEAD 2>/dev/null || echo unknown)
if [ -z "${DARKNET_NAME:-}" ]; then
    url=$(git -C "$DARKNET_DIR" remote get-url origin 2>/dev/null || true)
    DARKNET_NAME=$(printf '%s\n' "$url" | sed -n 's#.*github\.com[:/]\([^/]*/[^/]*\)$#\1#p' | sed 's#\.git$##')
    [ -n "$DARKNET_NAME" ] || DARKNET_NAME=$(basename "$(cd "$DARKNET_DIR" && pwd)")
fi
if [ -z "${DARKNET_OPTS:-}" ]; then
    DARKNET_OPTS=$(sed -n 's/^OPTS *= *//p' "$DARKNET_DIR/Makefile" 2>/dev/null | head -n 1)
    DARKNET_OPTS=${DARKNET_OPTS:-unknown}
fi
DARKNET_LABEL=${DARKNET_LABEL:-}
compiler="$($CC -dumpfullversion -dumpversion 2>/dev/null | head -n 1)"
case "$($CC --version 2>/dev/null | head -n 1)" in
    *clang*) compiler="clang $compiler" ;;
    *) compiler="gcc $compiler" ;;
esac
compiler="$compiler $(uname -m | tr _ -)"

# darknet's own objects need libm and pthreads; an OpenCV or CUDA build of darknet
# needs its extra libraries too: pass them in LDLIBS.
out=${BUILD_DIR:-$here/build}
mkdir -p "$out"
set -x
$CC -std=gnu99 -O2 -Wall -I"$DARKNET_DIR/include" -I"$here" \
    -DDARKPY_DUMP_DARKNET="\"$DARKNET_NAME@$commit\"" \
    -DDARKPY_DUMP_COMPILER="\"$compiler\"" \
    -DDARKPY_DUMP_DEFAULT_OPTS="\"$DARKNET_OPTS\"" \
    -DDARKPY_DUMP_DEFAULT_LABEL="\"$DARKNET_LABEL\"" \
    "$here/darkpy_dump.c" "$here/dump_format.c" "$DARKNET_DIR/libdarknet.a" \
    ${LDLIBS:-} -lm -pthread -o "$out/darkpy-dump"
$CC -std=gnu99 -O2 -Wall -I"$DARKNET_DIR/include" \
    "$here/darknet_info.c" "$DARKNET_DIR/libdarknet.a" \
    ${LDLIBS:-} -lm -pthread -o "$out/darkpy-darknet-info"
