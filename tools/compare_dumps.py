#!/usr/bin/env python3
"""Compare two darkpy-dump/1 case directories tensor by tensor, byte for byte.

    python3 tools/compare_dumps.py CASE_A CASE_B

Every tensor listed in both case.json files is compared as raw bytes (the
files are float32, so equal bytes means equal bits).  Prints one line per
differing tensor and a summary; exits 1 if any shared tensor differs or the
shapes disagree, 0 otherwise.  Only the Python standard library is used.
"""

import json
import struct
import sys
from pathlib import Path


def tensors(case):
    manifest = json.loads((case / "case.json").read_text())
    return {t["name"]: t for t in manifest["tensors"]}


def first_difference(a, b):
    """Index and values of the first float32 that differs (bitwise)."""
    for i in range(0, min(len(a), len(b)), 4):
        if a[i:i + 4] != b[i:i + 4]:
            (x,), (y,) = struct.unpack("<f", a[i:i + 4]), struct.unpack("<f", b[i:i + 4])
            return i // 4, x, y
    return min(len(a), len(b)) // 4, None, None


def compare(a, b, out=None):
    out = out or sys.stdout
    ta, tb = tensors(a), tensors(b)
    shared = [n for n in ta if n in tb]
    bad = 0
    for name in shared:
        if ta[name]["shape"] != tb[name]["shape"]:
            print(f"  {name}: shape {ta[name]['shape']} != {tb[name]['shape']}", file=out)
            bad += 1
            continue
        da = (a / ta[name]["file"]).read_bytes()
        db = (b / tb[name]["file"]).read_bytes()
        if da != db:
            i, x, y = first_difference(da, db)
            print(f"  {name}: differs, first at element {i}: {x!r} vs {y!r}", file=out)
            bad += 1
    only_a = [n for n in ta if n not in tb]
    only_b = [n for n in tb if n not in ta]
    print(f"{a} vs {b}: {len(shared) - bad}/{len(shared)} shared tensors bitwise equal"
          f" ({len(only_a)} only in the first, {len(only_b)} only in the second)", file=out)
    return bad == 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
