"""Tests of tools/: the darknet-side dumper (darkpy-dump) and its darknet-free half.

* dump_format.c (argument parsing, xorshift64*, the darkpy-dump/1 writer) is
  compiled with gcc and tools/dump_format_test.c; skipped when gcc is missing.
* The dumper itself needs a darknet build: set DARKNET_DIR to a darknet checkout
  with libdarknet.a built; skipped otherwise.  Its dumps of the golden network
  cases are compared byte for byte with tests/data/golden/strict (or, with
  DARKPY_GOLDEN_BUILD=ofast, with ../shared/golden/ofast).
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, GOLDEN, shared_path

TOOLS = Path(__file__).resolve().parent.parent / "tools"
INFO = DATA / "darknet_info"

sys.path.insert(0, str(TOOLS))
import compare_dumps  # noqa: E402  (tools/ is not a package)


# ---------------------------------------------------------------- dump_format.c

@pytest.fixture(scope="module")
def fmt(tmp_path_factory):
    """tools/dump_format_test built with gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing")
    exe = tmp_path_factory.mktemp("fmt") / "dump_format_test"
    subprocess.run([gcc, "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror",
                    "-O2", str(TOOLS / "dump_format.c"), str(TOOLS / "dump_format_test.c"),
                    "-lm", "-o", str(exe)], check=True)
    return exe


def parse(fmt, *args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DARKPY_DUMP_")}
    e.update(env or {})
    r = subprocess.run([str(fmt), "args", *args], capture_output=True, text=True, env=e)
    if r.returncode:
        assert r.returncode == 2
        return r.stdout.strip()
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_args_defaults(fmt):
    o = parse(fmt, "net.cfg")
    assert o["cfg"] == "net.cfg"
    assert o["weights"] == o["input"] == o["image"] == o["truth"] == "(null)"
    # neither --train nor --infer: both steps, as the golden cases
    assert (o["train"], o["infer"]) == ("1", "1")
    assert (o["out"], o["seed"], o["boxes"], o["letterbox"]) == ("dump", "1", "2", "1")
    assert o["opts"] == "unknown" and o["label"] == ""


def test_args_all_options(fmt):
    o = parse(fmt, "--weights", "w.weights", "--input", "in.f32", "--truth", "t.f32", "--train",
              "--out", "/tmp/x", "--seed", "0x10", "--boxes", "5", "--label", "strict",
              "--opts", "-O2 -ffp-contract=off", "a.cfg")
    assert o["cfg"] == "a.cfg" and o["weights"] == "w.weights" and o["input"] == "in.f32"
    assert o["truth"] == "t.f32" and o["out"] == "/tmp/x" and o["seed"] == "16" and o["boxes"] == "5"
    assert (o["train"], o["infer"]) == ("1", "0")
    assert o["label"] == "strict" and o["opts"] == "-O2 -ffp-contract=off"
    o = parse(fmt, "a.cfg", "--infer", "--image", "dog.jpg", "--image-mode", "resize",
              "--seed", "18446744073709551615")
    assert (o["train"], o["infer"], o["image"], o["letterbox"]) == ("0", "1", "dog.jpg", "0")
    assert o["seed"] == "18446744073709551615"


def test_args_environment_and_flags(fmt):
    env = {"DARKPY_DUMP_LABEL": "ofast", "DARKPY_DUMP_OPTS": "-Ofast"}
    o = parse(fmt, "a.cfg", env=env)
    assert (o["label"], o["opts"]) == ("ofast", "-Ofast")
    o = parse(fmt, "a.cfg", "--label", "mine", env=env)      # a flag beats the environment
    assert (o["label"], o["opts"]) == ("mine", "-Ofast")
    assert parse(fmt, "--help")["help"] == "1"


@pytest.mark.parametrize("args, message", [
    ((), "missing CFG"),
    (("a.cfg", "b.cfg"), "unexpected argument b.cfg"),
    (("a.cfg", "--frobnicate"), "unknown option --frobnicate"),
    (("a.cfg", "--weights"), "--weights needs a value"),
    (("a.cfg", "--seed", "-3"), "--seed: not a non-negative integer"),
    (("a.cfg", "--seed", "12x"), "--seed: not a non-negative integer"),
    (("a.cfg", "--boxes", "91"), "--boxes: expected 0..90"),
    (("a.cfg", "--image-mode", "crop"), "--image-mode: expected letterbox or resize"),
    (("a.cfg", "--input", "x.f32", "--image", "y.jpg"), "exclude each other"),
    (("a.cfg", "--infer", "--truth", "t.f32"), "--truth needs --train"),
])
def test_args_errors(fmt, args, message):
    out = parse(fmt, *args)
    assert isinstance(out, str) and out.startswith("error: ") and message in out


def xorshift64star(seed, n):
    """Vigna's xorshift64* in Python: the generator dump_format.c must implement."""
    x = seed or 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    out = []
    for _ in range(n):
        x ^= x >> 12
        x ^= (x << 25) & mask
        x ^= x >> 27
        out.append((x * 0x2545F4914F6CDD1D) & mask)
    return out


@pytest.mark.parametrize("seed", [1, 106, 0, 2**64 - 1])
def test_rng(fmt, seed):
    n = 50
    lines = subprocess.run([str(fmt), "rng", str(seed), str(n)], capture_output=True, text=True,
                           check=True).stdout.split()
    expected = xorshift64star(seed, n)
    assert [int(v, 16) for v in lines[:n]] == expected
    units = [float.fromhex(v) for v in lines[n:2 * n]]
    assert units == [(r >> 40) / 2**24 for r in expected]
    assert all(0 <= u < 1 for u in units)
    assert [float.fromhex(v) for v in lines[2 * n:]] == [2 * u - 1 for u in units]


def test_case_writer(fmt, tmp_path):
    case = tmp_path / "deep" / "case"          # parents are created
    subprocess.run([str(fmt), "case", str(case)], check=True)
    manifest = json.loads((case / "case.json").read_text())
    assert manifest["format"] == "darkpy-dump/1" and manifest["kind"] == "network"
    assert manifest["build"] == {"darknet": "someone/darknet@0123abcd", "compiler": "gcc 12.2.0 x86-64",
                                 "label": 'str"ict\\', "opts": "-O2\n-x"}
    p = manifest["params"]
    assert (p["cfg"], p["weights"], p["batch"], p["c"], p["h"], p["w"], p["layers"]) == \
        ("network.cfg", "weights.weights", 2, 1, 1, 3, 1)
    assert p["steps"] == ["forward train=0 (prefix infer_)", "forward train=1"]
    assert p["srand"] == 2**32 - 1  # the seed of C's rand() before the training forward (unsigned)
    g = manifest["generator"]
    assert g["seed"] == 2**64 - 1 and g["truth"] is None and g["seen"] == 7
    assert struct.pack("<f", g["learning_rate"]) == struct.pack("<f", 0.001)
    assert manifest["tensors"] == [
        {"name": "input", "file": "input.f32", "shape": [2, 1, 1, 3], "stage": "given"},
        {"name": "layer00_weights_after", "file": "layer00_weights_after.f32", "shape": [1, 1, 2, 2],
         "stage": "update"},
        {"name": "cost", "file": "cost.f32", "shape": [1], "stage": "forward"},
    ]
    bits = struct.unpack("<6I", (case / "input.f32").read_bytes())
    # 0.5, -0.0 (sign kept), +inf, -inf, the smallest denormal: bit for bit
    assert [bits[i] for i in (0, 1, 2, 3, 5)] == [0x3F000000, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001]
    assert bits[4] & 0x7F800000 == 0x7F800000 and bits[4] & 0x007FFFFF      # a NaN
    assert (case / "layer00_weights_after.f32").read_bytes() == struct.pack("<4f", 1, 2, 3, 4)
    assert (case / "cost.f32").read_bytes() == struct.pack("<f", 42.25)


# ---------------------------------------------------------------- compare_dumps.py

def test_compare_dumps_detects_one_flipped_bit(tmp_path, capsys):
    src = GOLDEN / "net-yolo-mini-infer"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    assert compare_dumps.compare(a, b)
    f = b / "infer_layer17_output.f32"
    raw = bytearray(f.read_bytes())
    raw[403] ^= 0x01                                        # one bit of element 100
    f.write_bytes(bytes(raw))
    assert not compare_dumps.compare(a, b)
    assert "infer_layer17_output: differs, first at element 100" in capsys.readouterr().out


# ---------------------------------------------------------------- with a darknet build

@pytest.fixture(scope="module")
def darknet(tmp_path_factory):
    """tools/build.sh run against $DARKNET_DIR; the directory holding the two programs."""
    root = os.environ.get("DARKNET_DIR")
    if not root:
        pytest.skip("DARKNET_DIR is unset (a darknet checkout with libdarknet.a built)")
    out = tmp_path_factory.mktemp("dumper")
    env = dict(os.environ, BUILD_DIR=str(out))
    subprocess.run(["sh", str(TOOLS / "build.sh")], check=True, env=env, capture_output=True)
    return out


def golden_dir():
    build = os.environ.get("DARKPY_GOLDEN_BUILD", "strict")
    return GOLDEN if build == "strict" else shared_path("golden", build)


@pytest.mark.parametrize("case", ["net-cls-mini", "net-yolo-mini", "net-tiny64", "net-yolo-mini-infer"])
def test_dumper_reproduces_golden_network_cases(darknet, tmp_path, case):
    g = golden_dir() / case
    out = tmp_path / case
    args = [str(darknet / "darkpy-dump"), str(g / "network.cfg"), "--weights", str(g / "weights.weights"),
            "--input", str(g / "input.f32"), "--out", str(out)]
    if (g / "truth.f32").exists():
        args += ["--truth", str(g / "truth.f32")]
    else:
        args += ["--infer"]
    subprocess.run(args, check=True, capture_output=True)
    ours = compare_dumps.tensors(out)
    theirs = compare_dumps.tensors(g)
    assert set(ours) == set(theirs)                                 # the same tensors
    assert compare_dumps.compare(g, out)                            # bit for bit
    # darknet's save_weights of what it loaded is the given file, byte for byte
    assert (out / "weights.weights").read_bytes() == (g / "weights.weights").read_bytes()
    assert (out / "network.cfg").read_bytes() == (g / "network.cfg").read_bytes()


def test_dumper_generated_case_is_deterministic_and_complete(darknet, tmp_path):
    cfg = GOLDEN / "net-yolo-mini" / "network.cfg"
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        subprocess.run([str(darknet / "darkpy-dump"), str(cfg), "--seed", "9", "--out", str(out)],
                       check=True, capture_output=True)
        runs.append(out)
    m = json.loads((runs[0] / "case.json").read_text())
    assert m["generator"]["seed"] == 9 and m["params"]["layers"] == 18
    names = [t["name"] for t in m["tensors"]]
    assert names[:2] == ["input", "truth"] and "cost" in names and "layer17_delta" in names
    assert names == [t["name"] for t in json.loads((golden_dir() / "net-yolo-mini" / "case.json")
                                                   .read_text())["tensors"]]
    for t in m["tensors"]:                      # every file holds exactly prod(shape) floats
        assert (runs[0] / t["file"]).stat().st_size == 4 * math.prod(t["shape"])
    assert compare_dumps.compare(runs[0], runs[1])
    assert (runs[0] / "weights.weights").read_bytes() == (runs[1] / "weights.weights").read_bytes()
    # the generated truth: 2 boxes per image, [x, y, w, h, class] with x, y inside the image
    truth = struct.unpack("<900f", (runs[0] / "truth.f32").read_bytes())
    for b in range(2):
        row = truth[b * 450:(b + 1) * 450]
        assert all(0 < v < 1 for v in row[0:4] + row[5:9]) and row[4] in (0, 1) and row[9] in (0, 1)
        assert not any(row[10:])
    # a different seed gives different weights
    other = tmp_path / "other"
    subprocess.run([str(darknet / "darkpy-dump"), str(cfg), "--seed", "10", "--infer", "--out", str(other)],
                   check=True, capture_output=True)
    assert (other / "weights.weights").read_bytes() != (runs[0] / "weights.weights").read_bytes()


def test_dumper_letterboxes_an_image(darknet, tmp_path):
    dog = Path(os.environ["DARKNET_DIR"]) / "data" / "dog.jpg"
    if not dog.exists():
        pytest.skip(f"{dog} is absent")
    out = tmp_path / "dog"
    subprocess.run([str(darknet / "darkpy-dump"), str(GOLDEN / "net-yolo-mini" / "network.cfg"), "--infer",
                    "--image", str(dog), "--out", str(out)], check=True, capture_output=True)
    x = struct.unpack(f"<{2 * 3 * 32 * 32}f", (out / "input.f32").read_bytes())
    # dog.jpg is 768x576: letterboxed to 32x24 inside 32x32, rows 0-3 and 28-31 grey (0.5)
    image = x[:3 * 32 * 32]
    assert x[3 * 32 * 32:] == image                          # the same image in both batch slots
    for c in range(3):
        plane = image[c * 1024:(c + 1) * 1024]
        assert set(plane[:4 * 32]) == {0.5} and set(plane[28 * 32:]) == {0.5}
        assert len(set(plane[4 * 32:28 * 32])) > 50 and all(0 <= v <= 1 for v in plane)
    m = json.loads((out / "case.json").read_text())
    assert "letterbox_image" in m["generator"]["input"] and "truth" not in [t["name"] for t in m["tensors"]]


def test_darknet_info_tables(darknet):
    for name in ("yolov3-tiny", "cifar", "yolov2-tiny"):
        cfg = shared_path("cfg", f"{name}.cfg")
        r = subprocess.run([str(darknet / "darkpy-darknet-info"), str(cfg)], capture_output=True, text=True,
                           check=True)
        assert r.stderr == (INFO / f"{name}.txt").read_text()
