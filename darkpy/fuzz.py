"""Fuzzing darkpy's readers: bad input may only ever raise darkpy's own errors.

Every reader of user files (cfg and YAML network descriptions, the network
builder and the layer loops it sets up, ``.weights`` files, dump directories,
the ``darkpy`` command line) is fed random and mutated input drawn from the
hypothesis strategies below.  For each input the property is the same:

* the only exceptions that escape are :class:`darkpy.errors.DarkpyError`
  subclasses, and the only warnings are :class:`darkpy.errors.DarkpyWarning`;
* a ``.weights`` file that is refused leaves the network's arrays untouched;
* a network that builds holds no more float32 buffers than ``memory_limit``;
* the command line returns 0, 1 or 2 and an error is one line, no traceback.

``tests/test_fuzz.py`` runs these strategies with small budgets; this module
is also a command for longer runs (see FUZZING.md)::

    python -m darkpy.fuzz --budget-seconds 600 [--seed N] [--reader cfg ...]

It prints, per reader, how many inputs it tried and how many escaped, writes a
reproducer file for each distinct escape (the smallest input seen) and exits
with status 1 when anything escaped.  ``--replay FILE`` re-runs one reproducer
and lets its exception through with the full traceback.

Inputs are plain JSON values (text, base64 bytes, lists of edit operations),
so a reproducer file holds exactly what the reader was given.
"""

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darkpy.errors import DarkpyError, DarkpyWarning

try:  # hypothesis is a test dependency: the strategies need it, the rest of the module does not
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - reported by main()
    st = None

#: Buffers a fuzzed network may allocate (bytes).  Small, so that each run is quick.
NETWORK_MEMORY_LIMIT = 8 * 2**20

# ----------------------------------------------------------------------------- seed inputs
# Small networks written for the fuzzer (not darknet's files): together they use
# every layer type darkpy builds, at shapes that build and run in milliseconds.

SEED_CFGS = {
    "yolo": """[net]
batch=2
width=8
height=8
channels=3
learning_rate=0.001
momentum=0.9
decay=0.0005
policy=steps
steps=2,4
scales=.1,.1
max_batches=10

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=4
size=1
stride=1
pad=1
activation=linear

[shortcut]
from=-2
activation=linear

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=14
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=1,2,3,4,5,6
classes=2
num=3
jitter=.3
ignore_thresh=.7
truth_thresh=1
""",
    "classifier": """[net]
batch=2
subdivisions=1
width=6
height=6
channels=2
learning_rate=0.01
momentum=0.9
decay=0.0005
policy=poly
power=4
max_batches=100

[convolutional]
filters=3
size=3
stride=1
pad=1
activation=relu

[maxpool]
size=2
stride=1

[batchnorm]

[dropout]
probability=.3

[avgpool]

[connected]
output=4
activation=linear

[softmax]
groups=1

[cost]
type=sse
""",
    "region": """[net]
batch=1
width=4
height=4
channels=4
learning_rate=0.001
policy=exp
gamma=0.9

[reorg]
stride=2

[activation]
activation=logistic

[convolutional]
filters=7
size=1
stride=1
pad=0
activation=linear

[region]
anchors=1.5,2
classes=2
coords=4
num=1
softmax=1
""",
    "detection": """[net]
batch=1
width=5
height=5
channels=2
learning_rate=0.001
policy=step
step=2
scale=.5

[crop]
crop_height=4
crop_width=4
flip=0

[connected]
output=28
activation=linear

[detection]
classes=2
coords=4
rescore=1
side=2
num=1
softmax=0
sqrt=1
""",
}

#: Option values that make readers and builders work hardest.
INTERESTING_VALUES = [
    "0", "1", "-1", "2", "-2", "3", "4", "7", "9", "16", "-16", "100", "1000", "65536",
    "2147483647", "2147483648", "-2147483648", "99999999999", "1.5", ".5", "-.5", "1e9",
    "1e-45", "1e39", "nan", "inf", "-inf", "abc", "1,2", "0,0", "-1,-4", "1,,2", ",", "0x10",
    "linear", "leaky", "logistic", "relu", "bogus", "sse", "steps", "poly", "sigmoid", "random",
]

#: Fragments of cfg text: headers, option names, punctuation and awkward bytes.
CFG_TOKENS = [
    "[net]", "[network]", "[convolutional]", "[conv]", "[connected]", "[maxpool]", "[avgpool]",
    "[route]", "[shortcut]", "[upsample]", "[reorg]", "[crop]", "[dropout]", "[softmax]",
    "[cost]", "[yolo]", "[region]", "[detection]", "[batchnorm]", "[activation]", "[local]",
    "[lstm]", "[bogus]", "[", "]", "=", "\n", "\r\n", "#", ";", " ", "\t", "\0", "\ufeff", "\xe9",
    "batch=", "width=", "height=", "channels=", "inputs=", "subdivisions=", "time_steps=",
    "filters=", "size=", "stride=", "pad=", "padding=", "groups=", "activation=",
    "batch_normalize=", "layers=", "from=", "mask=", "anchors=", "classes=", "num=", "coords=",
    "side=", "output=", "probability=", "crop_height=", "crop_width=", "policy=", "steps=",
    "scales=", "step=", "max_batches=", "burn_in=", "type=", "tree=", "map=", "reverse=",
    "extra=", "flatten=", "learning_rate=", "dontload=", "numload=", "flipped=",
] + INTERESTING_VALUES


# ----------------------------------------------------------------------------- applying edits

def apply_text_edits(text, edits):
    """Apply line and character edits (JSON lists, see ``text_edits``) to ``text``.

    ``["value", i, v]`` replaces the value of the i-th ``key=value`` line,
    ``["insert", i, s]`` inserts line ``s`` before line i, ``["delete", i]``,
    ``["duplicate", i]``, ``["swap", i, j]`` work on lines, and
    ``["chars", pos, cut, s]`` replaces ``cut`` characters at ``pos`` by ``s``.
    Indices wrap around, so every edit applies to every text.
    """
    for edit in edits:
        op = edit[0]
        if op == "chars":
            pos = edit[1] % (len(text) + 1)
            text = text[:pos] + edit[3] + text[pos + edit[2]:]
            continue
        lines = text.split("\n")
        n = len(lines)
        if op == "value":
            options = [k for k, line in enumerate(lines) if "=" in line]
            if options:
                k = options[edit[1] % len(options)]
                lines[k] = lines[k].split("=", 1)[0] + "=" + edit[2]
        elif op == "insert":
            lines.insert(edit[1] % (n + 1), edit[2])
        elif op == "delete":
            del lines[edit[1] % n]
        elif op == "duplicate":
            k = edit[1] % n
            lines.insert(k, lines[k])
        elif op == "swap":
            i, j = edit[1] % n, edit[2] % n
            lines[i], lines[j] = lines[j], lines[i]
        text = "\n".join(lines)
    return text


def apply_bytes_edits(data, edits):
    """Apply byte edits to a ``.weights`` file's bytes (see ``weights_inputs``)."""
    import struct
    data = bytearray(data)
    for edit in edits:
        op = edit[0]
        if op == "truncate":
            del data[edit[1] % (len(data) + 1):]
        elif op == "append":
            data += base64.b64decode(edit[1])
        elif op == "overwrite":
            at = edit[1] % (len(data) + 1)
            chunk = base64.b64decode(edit[2])
            data[at:at + len(chunk)] = chunk
        elif op == "header":
            data[edit[1]:edit[1] + 4] = struct.pack("<i", edit[2])
        elif op == "float":  # one float32 of the data set to an awkward value
            if len(data) >= 24:
                at = 20 + 4 * (edit[1] % ((len(data) - 20) // 4))
                data[at:at + 4] = struct.pack("<f", float(edit[2]))
        elif op == "random":
            data = bytearray(base64.b64decode(edit[1]))
    return bytes(data)


def _walk(node, path):
    """Follow a path of integers through JSON containers; (parent, key) of where it ends."""
    parent, key = None, None
    for step in path:
        if isinstance(node, dict) and node:
            keys = sorted(node)
            parent, key = node, keys[step % len(keys)]
        elif isinstance(node, list) and node:
            parent, key = node, step % len(node)
        else:
            break
        node = parent[key]
    return parent, key


def apply_manifest_edits(case_dir, edits):
    """Apply edits (see ``manifest_inputs``) to the dump directory ``case_dir`` in place."""
    case_dir = Path(case_dir)
    mpath = case_dir / "case.json"
    manifest = json.loads(mpath.read_text())
    files = [t["file"] for t in manifest.get("tensors", [])]
    raw = None
    for edit in edits:
        op = edit[0]
        if op == "set":
            parent, key = _walk(manifest, edit[1])
            if parent is not None:
                parent[key] = edit[2]
        elif op == "delete":
            parent, key = _walk(manifest, edit[1])
            if parent is not None:
                del parent[key]
        elif op == "add":
            parent, key = _walk(manifest, edit[1])
            target = manifest if parent is None else parent[key]
            if isinstance(target, dict):
                target[edit[2]] = edit[3]
            elif isinstance(target, list):
                target.append(edit[3])
        elif op == "file" and files:
            path = case_dir / files[edit[1] % len(files)]
            action, n = edit[2], edit[3]
            if not path.is_file():
                continue
            data = path.read_bytes()
            if action == "truncate":
                path.write_bytes(data[:n % (len(data) + 1)])
            elif action == "append":
                path.write_bytes(data + bytes(n % 64))
            elif action == "remove":
                path.unlink()
            elif action == "float64":
                path.write_bytes(np.frombuffer(data[:len(data) // 4 * 4], "<f4").astype("<f8").tobytes())
            elif action == "nan":
                arr = np.frombuffer(data[:len(data) // 4 * 4], "<f4").copy()
                if arr.size:
                    arr[n % arr.size] = np.nan
                path.write_bytes(arr.tobytes())
        elif op == "cfg":
            cfg = case_dir / "network.cfg"
            if cfg.is_file():
                cfg.write_text(apply_text_edits(cfg.read_text(), edit[1]))
        elif op == "weights":
            w = case_dir / "weights.weights"
            if w.is_file():
                w.write_bytes(apply_bytes_edits(w.read_bytes(), edit[1]))
        elif op == "raw":
            raw = edit[1]
        elif op == "cut":
            raw = json.dumps(manifest)[: edit[1]]
    mpath.write_text(raw if raw is not None else json.dumps(manifest))


# ----------------------------------------------------------------------------- strategies

def _need_hypothesis():
    if st is None:
        raise DarkpyError("fuzzing needs hypothesis: pip install 'darkpy[test]'")


def text_edits(tokens=None, max_edits=8):
    """A strategy of edit lists for ``apply_text_edits``."""
    _need_hypothesis()
    tokens = CFG_TOKENS if tokens is None else tokens
    fragment = st.lists(st.one_of(st.sampled_from(tokens), st.characters(codec="utf-8")),
                        max_size=4).map("".join)
    value = st.one_of(st.sampled_from(INTERESTING_VALUES), st.integers(-2**40, 2**40).map(str),
                      st.lists(st.sampled_from(INTERESTING_VALUES[:20]), min_size=2, max_size=8).map(",".join),
                      fragment)
    index = st.integers(0, 10**6)
    edit = st.one_of(
        st.tuples(st.just("value"), index, value),
        st.tuples(st.just("value"), index, value),
        st.tuples(st.just("insert"), index, st.one_of(st.sampled_from(tokens).map(lambda t: t + "1"), fragment)),
        st.tuples(st.just("delete"), index),
        st.tuples(st.just("duplicate"), index),
        st.tuples(st.just("swap"), index, index),
        st.tuples(st.just("chars"), index, st.integers(0, 6), fragment),
    ).map(list)
    return st.lists(edit, min_size=1, max_size=max_edits)


def cfg_texts():
    """cfg text: mutated seed networks, or text assembled from cfg fragments."""
    _need_hypothesis()
    mutated = st.tuples(st.sampled_from(sorted(SEED_CFGS)), text_edits()).map(
        lambda t: apply_text_edits(SEED_CFGS[t[0]], t[1]))
    assembled = st.lists(st.one_of(st.sampled_from(CFG_TOKENS), st.characters(codec="utf-8")),
                         max_size=80).map("".join)
    return st.one_of(mutated, mutated, mutated, assembled)


#: Values a network builder must take or refuse cleanly: sizes, indices, lists, activations.
NETWORK_VALUES = ["0", "1", "-1", "2", "-2", "3", "-3", "4", "5", "7", "8", "9", "13", "16", "28", "100",
                  "1000", "65536", "2147483647", "-2147483648", ".5", "1.5", "0,1", "-1,0", "-1,-2", "1,2,3",
                  "-1,-3", "5", "1,2,3,4,5,6", "leaky", "linear", "logistic", "relu", "tanh", "sse", "L1",
                  "smooth", "constant", "steps", "step", "poly", "exp", "sigmoid", "random"]


def network_texts():
    """cfg text for the builder: seed networks with changed values, options and sections.

    Most edits keep the text a well-formed cfg, so that inputs get past the reader
    and exercise the layer parsers, the shape checks and the loops.
    """
    _need_hypothesis()
    keys = [t[:-1] for t in CFG_TOKENS if t.endswith("=")]
    headers = [t for t in CFG_TOKENS if t.startswith("[") and t.endswith("]") and t not in ("[local]", "[lstm]",
                                                                                             "[bogus]")]
    value = st.one_of(st.sampled_from(NETWORK_VALUES), st.integers(-20, 40).map(str))
    index = st.integers(0, 10**6)
    edit = st.one_of(
        st.tuples(st.just("value"), index, value),
        st.tuples(st.just("value"), index, value),
        st.tuples(st.just("value"), index, value),
        st.tuples(st.just("insert"), index, st.tuples(st.sampled_from(keys), value).map("=".join)),
        st.tuples(st.just("insert"), index, st.tuples(st.sampled_from(keys), value).map("=".join)),
        st.tuples(st.just("insert"), index, st.sampled_from(headers)),
        st.tuples(st.just("delete"), index),
        st.tuples(st.just("duplicate"), index),
        st.tuples(st.just("swap"), index, index),
    ).map(list)
    return st.tuples(st.sampled_from(sorted(SEED_CFGS)), st.lists(edit, min_size=1, max_size=5)).map(
        lambda t: apply_text_edits(SEED_CFGS[t[0]], t[1]))


def _yaml_seeds():
    from darkpy.description import parse_cfg_text, to_yaml_text
    return {name: to_yaml_text(parse_cfg_text(text, f"{name}.cfg")) for name, text in SEED_CFGS.items()}


YAML_TOKENS = ["net:", "network:", "layers:", "- type: convolutional", "- layer: cost", "- type: route",
               "  ", "\n", ": ", "- ", "[", "]", "{", "}", ",", "'", '"', "&a", "*a", "!!python/object:",
               "!!binary", "!!float", "? ", "---", "...", "|", ">", "#", "~", "null", "yes", "no",
               "0o17", "1_000", "1:30", ".inf", ".nan", "<<: *a", "type:", "filters:", "layers: [-1, 0]"]


def yaml_texts():
    """YAML text: mutated YAML forms of the seed networks, or random YAML documents."""
    _need_hypothesis()
    seeds = _yaml_seeds()
    mutated = st.tuples(st.sampled_from(sorted(seeds)), text_edits(YAML_TOKENS + INTERESTING_VALUES)).map(
        lambda t: apply_text_edits(seeds[t[0]], t[1]))
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                       st.sampled_from(INTERESTING_VALUES))
    values = st.recursive(scalar, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)),
        max_leaves=12)
    option_names = st.one_of(st.sampled_from([t[:-1] for t in CFG_TOKENS if t.endswith("=")]), st.text(max_size=6))
    layer = st.tuples(st.sampled_from(["convolutional", "route", "yolo", "cost", "maxpool", "connected",
                                       "bogus", "net", ""]),
                      st.dictionaries(option_names, values, max_size=5)).map(
        lambda t: {"type": t[0], **{k: v for k, v in t[1].items() if k not in ("type", "layer")}})
    document = st.fixed_dictionaries({"net": st.dictionaries(option_names, values, max_size=6)},
                                     optional={"layers": st.lists(layer, max_size=4), "extra": values})
    import yaml
    dumped = st.one_of(document, values).map(lambda d: yaml.safe_dump(d, sort_keys=False))
    assembled = st.lists(st.sampled_from(YAML_TOKENS + INTERESTING_VALUES), max_size=40).map("".join)
    return st.one_of(mutated, mutated, dumped, assembled)


def weights_inputs():
    """(seed network name, byte edits of a valid .weights file for it)."""
    _need_hypothesis()
    b64 = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())
    edit = st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, 4000)),
        st.tuples(st.just("append"), b64),
        st.tuples(st.just("overwrite"), st.integers(0, 4000), b64),
        st.tuples(st.just("header"), st.sampled_from([0, 4, 8, 12, 16]),
                  st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, 1, 2, 999, 1000, 1001]))),
        st.tuples(st.just("float"), st.integers(0, 10**6),
                  st.sampled_from(["nan", "inf", "-inf", "0", "-0", "1e38", "1e-45"])),
        st.tuples(st.just("random"), st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())),
    ).map(list)
    return st.tuples(st.sampled_from(sorted(SEED_CFGS)), st.lists(edit, max_size=4)).map(list)


def json_values():
    """Arbitrary JSON values, biased to what a manifest holds."""
    _need_hypothesis()
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64),
                       st.sampled_from([0, 1, -1, 2, 3, 10**12, 2**31]),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
                       st.sampled_from(["darkpy-dump/1", "network", "batchnorm", "convolutional", "given",
                                        "forward", "backward", "update", "input.f32", "../x", "/etc/passwd",
                                        "network.cfg", "weights.weights", "leaky", "bogus", "x" * 300,
                                        "forward train=1", "layer00_output", "layer99_delta", ""]))
    return st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4),
                                                    st.dictionaries(st.text(max_size=8), c, max_size=4)),
                        max_leaves=8)


def manifest_inputs():
    """(seed case name, edits of its directory): manifest fields, tensor files, its cfg and weights."""
    _need_hypothesis()
    path = st.lists(st.integers(0, 1000), min_size=1, max_size=4)
    edit = st.one_of(
        st.tuples(st.just("set"), path, json_values()),
        st.tuples(st.just("set"), path, json_values()),
        st.tuples(st.just("delete"), path),
        st.tuples(st.just("add"), path, st.sampled_from(["name", "file", "shape", "stage", "steps", "batch",
                                                         "weights", "cfg", "update", "x"]), json_values()),
        st.tuples(st.just("file"), st.integers(0, 100),
                  st.sampled_from(["truncate", "append", "remove", "float64", "nan"]), st.integers(0, 10**6)),
        st.tuples(st.just("cfg"), text_edits(max_edits=3)),
        st.tuples(st.just("weights"), weights_inputs().map(lambda t: t[1])),
        st.tuples(st.just("raw"), st.one_of(st.text(max_size=30), st.integers(1, 3000).map(lambda n: "[" * n))),
        st.tuples(st.just("cut"), st.integers(0, 400)),
    ).map(list)
    return st.tuples(st.sampled_from(["batchnorm", "convolutional", "network"]),
                     st.lists(edit, min_size=1, max_size=4)).map(list)


#: Command-line options per command, each with the words that may follow it.
_CLI_FILES = ["@cfg", "@yaml", "@badcfg", "@hugecfg", "@case", "@badcase", "@weights", "@shortweights",
              "@nanweights", "@missing", "@out", "@out.yaml", "@out.cfg", "@input", "@casejson",
              "@underfile"]
_CLI_NUMBERS = ["0", "1", "-1", "2", "3", "x", "1e3", "99999999999"]
_NET_OPTIONS = [("--weights", _CLI_FILES), ("--batch", _CLI_NUMBERS), ("--input", _CLI_FILES),
                ("--dump", _CLI_FILES), ("--force", None), ("--repeat", ["0", "1", "2", "-1", "x"]),
                ("--seed", _CLI_NUMBERS), ("--kernels", ["reference", "fast", "gpu"])]
_CLI_COMMANDS = {
    "forward": (1, _NET_OPTIONS),
    "backward": (1, _NET_OPTIONS + [("--truth", _CLI_FILES), ("--update", None)]),
    "check": (2, [("--json", _CLI_FILES), ("-q", None)]),
    "compare": (2, []),
    "convert": (2, [("--force", None)]),
    "info": (1, [("--batch", _CLI_NUMBERS)]),
}


def cli_inputs():
    """argv lists for ``darkpy.cli.main``: a command, its files, its options; ``@name`` is a fixture file."""
    _need_hypothesis()

    def command(name):
        positional, options = _CLI_COMMANDS[name]
        option = st.sampled_from(options or [("--force", None)]).flatmap(
            lambda o: st.just([o[0]]) if o[1] is None else st.sampled_from(o[1]).map(lambda v: [o[0], v]))
        noise = st.lists(st.sampled_from(list(_CLI_COMMANDS) + _CLI_FILES + _CLI_NUMBERS + ["--bogus", "--"]),
                         max_size=1)
        return st.tuples(st.lists(st.sampled_from(_CLI_FILES), min_size=1, max_size=positional),
                         st.lists(option, max_size=3), noise).map(
            lambda t: [name] + t[0] + [w for o in t[1] for w in o] + t[2])

    return st.sampled_from(sorted(_CLI_COMMANDS)).flatmap(command)


STRATEGIES = {
    "cfg": cfg_texts,
    "yaml": yaml_texts,
    "network": network_texts,
    "weights": weights_inputs,
    "manifest": manifest_inputs,
    "cli": cli_inputs,
}


# ----------------------------------------------------------------------------- running one input

class Escaped(Exception):
    """A property violation that is not an exception (memory limit not enforced, a corrupted network, ...)."""


@contextlib.contextmanager
def _workdir():
    path = tempfile.mkdtemp(prefix="darkpy-fuzz-")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _network_bytes(net):
    """Bytes of every numpy buffer a built network holds (shared buffers, as dropout's, once)."""
    from darkpy.layer import Layer
    seen = {}
    for l in net.layers:
        fields = [getattr(l, name, None) for name in Layer.__slots__] + list(l.extra_fields.values())
        for buf in fields:
            if isinstance(buf, np.ndarray):
                seen[id(buf)] = buf.nbytes
    for buf in (net.workspace, net.input, net.truth):
        if isinstance(buf, np.ndarray):
            seen[id(buf)] = buf.nbytes
    return sum(seen.values())


def run_cfg(text):
    """Parse cfg text; a description that parses must write and re-read as the same description."""
    from darkpy.description import parse_cfg_text, parse_yaml_text, to_cfg_text, to_yaml_text
    desc = parse_cfg_text(text, "fuzz.cfg")
    for write, read in ((to_cfg_text, parse_cfg_text), (to_yaml_text, parse_yaml_text)):
        again = read(write(desc), "again")
        if not again.same_as(desc):
            raise Escaped(f"{write.__name__} did not round-trip")
    return "parsed"


def run_yaml(text):
    """Parse YAML text, write it back both ways, and build the network it describes."""
    from darkpy.description import parse_cfg_text, parse_yaml_text, to_cfg_text, to_yaml_text
    from darkpy.network import build_network
    desc = parse_yaml_text(text, "fuzz.yaml")
    for write, read in ((to_cfg_text, parse_cfg_text), (to_yaml_text, parse_yaml_text)):
        if not read(write(desc), "again").same_as(desc):
            raise Escaped(f"{write.__name__} did not round-trip")
    net = build_network(desc, memory_limit=NETWORK_MEMORY_LIMIT)
    if _network_bytes(net) > NETWORK_MEMORY_LIMIT:
        raise Escaped(f"built a network of {_network_bytes(net)} bytes past memory_limit={NETWORK_MEMORY_LIMIT}")
    return "built"


def run_network(text):
    """Build the cfg's network under a small memory limit and run forward, backward and update."""
    from darkpy.description import parse_cfg_text
    from darkpy.network import (backward_network, build_network, forward_network, randomize_parameters,
                                update_network)
    net = build_network(parse_cfg_text(text, "fuzz.cfg"), memory_limit=NETWORK_MEMORY_LIMIT)
    size = _network_bytes(net)
    if size > NETWORK_MEMORY_LIMIT:
        raise Escaped(f"built a network holding {size} bytes past memory_limit={NETWORK_MEMORY_LIMIT}")
    randomize_parameters(net, 0)
    rng = np.random.Generator(np.random.PCG64(1))
    net.input[:] = rng.random(net.input.size, dtype=np.float32)
    net.truth[:] = rng.random(net.truth.size, dtype=np.float32)
    net.train = 0
    forward_network(net)
    net.seen += net.batch
    net.train = 1
    forward_network(net)
    backward_network(net)
    update_network(net)
    return "ran"


_SEED_NETS = {}


def _seed_weights(name):
    """A valid .weights file (bytes) for seed network ``name``."""
    if name not in _SEED_NETS:
        from darkpy.description import parse_cfg_text
        from darkpy.network import build_network, randomize_parameters
        from darkpy.weights import save_weights
        net = build_network(parse_cfg_text(SEED_CFGS[name], f"{name}.cfg"))
        randomize_parameters(net, 3)
        with _workdir() as tmp:
            save_weights(net, tmp / "w.weights")
            _SEED_NETS[name] = (tmp / "w.weights").read_bytes()
    return _SEED_NETS[name]


def _parameters(net):
    fields = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")
    return [[None if getattr(l, f) is None else getattr(l, f).copy() for f in fields] for l in net.layers] + [net.seen]


def run_weights(value):
    """Load edited .weights bytes into the seed network; a refused file must leave it untouched."""
    from darkpy.description import parse_cfg_text
    from darkpy.errors import WeightsError
    from darkpy.network import build_network
    from darkpy.weights import load_weights
    name, edits = value
    data = apply_bytes_edits(_seed_weights(name), edits)
    net = build_network(parse_cfg_text(SEED_CFGS[name], f"{name}.cfg"))
    net.seen = 5
    before = _parameters(net)
    with _workdir() as tmp:
        path = tmp / "fuzz.weights"
        path.write_bytes(data)
        try:
            report = load_weights(net, path)
        except WeightsError:
            after = _parameters(net)
            same = after[-1] == before[-1] and all(
                (a is None and b is None) or (a is not None and b is not None
                                              and a.tobytes() == b.tobytes())
                for la, lb in zip(after[:-1], before[:-1]) for a, b in zip(la, lb))
            if not same:
                raise Escaped("a refused .weights file changed the network") from None
            raise
    if report.floats * 4 + report.header.size + report.leftover_bytes != len(data):
        raise Escaped("load_weights' report does not account for every byte of the file")
    return "loaded"


_SEED_CASES = {}


def _seed_cases(root):
    """Small dump directories of each kind, computed by darkpy itself, under ``root``."""
    from darkpy.check import run_case
    from darkpy.dump import read_case, write_case
    rng = np.random.Generator(np.random.PCG64(7))
    r = lambda n, lo=-1.0, hi=1.0: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    cases = {}
    bn = {"batch": 2, "c": 3, "h": 2, "w": 2, "train": 1}
    bn_given = [("input", r(24), [2, 3, 2, 2]), ("scales", r(3), [3]), ("biases", r(3), [3]),
                ("rolling_mean_before", r(3), [3]), ("rolling_variance_before", r(3, .5, 2), [3]),
                ("bias_updates_before", r(3), [3]), ("scale_updates_before", r(3), [3]),
                ("delta_in", r(24), [2, 3, 2, 2])]
    conv = {"batch": 1, "c": 2, "h": 4, "w": 4, "filters": 3, "size": 3, "stride": 1, "padding": 1,
            "groups": 1, "activation": "leaky", "batch_normalize": 1, "out_h": 4, "out_w": 4,
            "update": {"learning_rate": .01, "momentum": .9, "decay": .0005, "batch": 1}}
    conv_given = [("input", r(32), [1, 2, 4, 4]), ("net_delta_before", r(32), [1, 2, 4, 4]),
                  ("weights_before", r(54), [3, 2, 3, 3]), ("biases_before", r(3), [3]),
                  ("weight_updates_before", r(54), [54]), ("bias_updates_before", r(3), [3]),
                  ("scales_before", r(3), [3]), ("scale_updates_before", r(3), [3]),
                  ("rolling_mean_before", r(3), [3]), ("rolling_variance_before", r(3, .5, 2), [3]),
                  ("delta_in", r(48), [1, 3, 4, 4])]
    for kind, params, given in (("batchnorm", bn, bn_given), ("convolutional", conv, conv_given)):
        tmp = root / f".{kind}-given"
        write_case(tmp, kind, params, [(n, a, s, "given") for n, a, s in given])
        computed = run_case(read_case(tmp))
        tensors = [(n, a, s, "given") for n, a, s in given]
        tensors += [(n, a, [a.size], "forward") for n, a in computed.items()]
        cases[kind] = write_case(root / kind, kind, params, tensors)
        shutil.rmtree(tmp)
    with _workdir() as tmp:
        cfg = tmp / "classifier.cfg"
        cfg.write_text(SEED_CFGS["classifier"])
        from darkpy.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["backward", str(cfg), "--update", "--dump", str(root / "network")])
        if rc != 0:
            raise RuntimeError("could not write the network seed case")
    cases["network"] = root / "network"
    return cases


def run_manifest(value):
    """Edit a seed dump directory, then read it and re-run it with ``check_case``."""
    from darkpy.check import check_case
    kind, edits = value
    if "root" not in _SEED_CASES:
        _SEED_CASES["root"] = Path(tempfile.mkdtemp(prefix="darkpy-fuzz-seeds-"))
        _SEED_CASES.update(_seed_cases(_SEED_CASES["root"]))
    with _workdir() as tmp:
        case = tmp / "case"
        shutil.copytree(_SEED_CASES[kind], case)
        apply_manifest_edits(case, edits)
        res = check_case(case)
    return "identical" if res.ok else "differs"


def _cli_fixtures(root):
    """The files ``@name`` in a fuzzed argv stands for."""
    (root / "cfg.cfg").write_text(SEED_CFGS["region"])
    (root / "bad.cfg").write_text(SEED_CFGS["region"].replace("filters=7", "filters=x"))
    (root / "huge.cfg").write_text(SEED_CFGS["region"].replace("width=4", "width=400000")
                                   .replace("height=4", "height=400000"))
    from darkpy.description import parse_cfg_text, to_yaml_text
    (root / "net.yaml").write_text(to_yaml_text(parse_cfg_text(SEED_CFGS["classifier"])))
    if "root" not in _SEED_CASES:
        _SEED_CASES["root"] = Path(tempfile.mkdtemp(prefix="darkpy-fuzz-seeds-"))
        _SEED_CASES.update(_seed_cases(_SEED_CASES["root"]))
    shutil.copytree(_SEED_CASES["batchnorm"], root / "case")
    shutil.copytree(_SEED_CASES["batchnorm"], root / "badcase")
    (root / "badcase" / "input.f32").write_bytes(b"\0" * 6)
    from darkpy.network import build_network, randomize_parameters
    from darkpy.weights import save_weights
    net = build_network(parse_cfg_text(SEED_CFGS["region"]))
    randomize_parameters(net, 1)
    save_weights(net, root / "w.weights")
    data = (root / "w.weights").read_bytes()
    (root / "short.weights").write_bytes(data[:-10])
    net.layers[2].weights[0] = np.nan
    save_weights(net, root / "nan.weights")
    np.zeros(net.inputs * net.batch, "<f4").tofile(root / "input.f32")
    return {"@cfg": "cfg.cfg", "@yaml": "net.yaml", "@badcfg": "bad.cfg", "@hugecfg": "huge.cfg",
            "@case": "case", "@badcase": "badcase", "@weights": "w.weights", "@shortweights": "short.weights",
            "@nanweights": "nan.weights", "@missing": "missing", "@out": "out", "@out.yaml": "out.yaml",
            "@out.cfg": "out.cfg", "@input": "input.f32", "@casejson": "case/case.json",
            "@underfile": "cfg.cfg/out"}


def _snapshot(root):
    """Contents of every fixture file under ``root`` (outputs excluded)."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("out")
            and "out" not in p.relative_to(root).parts}


def _cli_inputs(argv):
    """The words of ``argv`` that name files the command reads (not its outputs)."""
    outputs = {k + 1 for k, a in enumerate(argv) if a in ("--dump", "--json")}
    if argv and argv[0] == "convert":
        positional = [k for k, a in enumerate(argv[1:], 1) if a.startswith("@")
                      and k - 1 not in outputs and argv[k - 1] not in ("--dump", "--json")]
        outputs.update(positional[1:2])
    return [a for k, a in enumerate(argv) if k not in outputs]


def run_cli(argv):
    """``darkpy.cli.main(argv)``: exit 0/1/2 (argparse: SystemExit 0/2); an error is one line.

    Without ``--force`` no input file may change.
    """
    from darkpy import kernels
    from darkpy.cli import main
    with _workdir() as tmp:
        names = _cli_fixtures(tmp)
        args = [str(tmp / names[a]) if a in names else a for a in argv]
        before = _snapshot(tmp)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(args)
        except SystemExit as e:  # argparse's own usage errors
            if e.code not in (0, 2):
                raise Escaped(f"SystemExit({e.code!r})") from None
            rc = "usage"
        finally:
            kernels.use("fast")
        if "--force" not in argv:
            after = _snapshot(tmp)
            inputs = [tmp / names[a] for a in _cli_inputs(argv) if a in names]
            changed = [str(p.relative_to(tmp)) for p in before if after.get(p) != before[p]
                       and any(p == i or i in p.parents for i in inputs)]
            if changed:
                raise Escaped(f"exit {rc}: input files changed without --force: {', '.join(changed)}")
        if rc == "usage":
            return rc
        if rc not in (0, 1, 2):
            raise Escaped(f"main returned {rc!r}")
        if rc == 2:
            lines = err.getvalue().splitlines()
            if len(lines) != 1 or not lines[0].startswith("darkpy: error: ") or "Traceback" in err.getvalue():
                raise Escaped(f"exit 2 without a one-line error: {err.getvalue()!r}")
        return f"exit {rc}"


RUNNERS = {
    "cfg": run_cfg,
    "yaml": run_yaml,
    "network": run_network,
    "weights": run_weights,
    "manifest": run_manifest,
    "cli": run_cli,
}


# ----------------------------------------------------------------------------- tallying

@dataclass(frozen=True)
class Known:
    """A reported bug in a file this module does not own: escapes it explains are labelled, not hidden."""

    name: str
    kinds: tuple      # exception class names (or "Escaped" for a broken property)
    where: str        # substring of Escape.where (file name, function) or of the message
    fix: str          # the file to fix and how (also in the report and FUZZING.md)

    def explains(self, escape):
        return escape.kind in self.kinds and (self.where in escape.where or self.where in escape.message)


#: Bugs found by fuzzing and reported for fixing, each with a strict xfail test in tests/test_errors.py.
#: Delete an entry when its fix lands (tests/test_fuzz.py checks that each still reproduces).
KNOWN = [
]


def known(escape):
    """The :class:`Known` bug that explains ``escape``, or None."""
    return next((k for k in KNOWN if k.explains(escape)), None)


@dataclass
class Escape:
    """One input that broke the property, with what escaped."""

    reader: str
    value: object
    kind: str       # exception class name
    message: str
    where: str      # innermost darkpy frame: file:line in function
    traceback: str

    @property
    def signature(self):
        return f"{self.kind} at {self.where}"

    @property
    def size(self):
        return len(json.dumps(self.value))


@dataclass
class Tally:
    """Per reader: inputs tried, outcomes, and one (smallest) escape per signature."""

    tried: Counter = field(default_factory=Counter)
    outcomes: dict = field(default_factory=dict)
    escaped: Counter = field(default_factory=Counter)
    escapes: dict = field(default_factory=dict)
    slowest: dict = field(default_factory=dict)  # reader -> (seconds, input)

    def add(self, escape):
        self.escaped[escape.reader] += 1
        key = (escape.reader, escape.signature)
        old = self.escapes.get(key)
        if old is None or escape.size < old.size:
            self.escapes[key] = escape


def _where(tb):
    frames = traceback.extract_tb(tb)
    inside = [f for f in frames if f"{os.sep}darkpy{os.sep}" in f.filename and not f.filename.endswith("fuzz.py")]
    f = (inside or frames or [None])[-1]
    if f is None:
        return "?"
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


#: Readers whose errors must name the file they read (the CLI's are checked through its output).
_NAMED_FILE_READERS = ("cfg", "yaml", "network", "weights", "manifest")


def check(reader, value):
    """Run one input: ``(outcome, escape)``, ``escape`` None when the property held.

    The property: only DarkpyError escapes (naming a file, for the file readers),
    only DarkpyWarning is warned, and the reader's own checks (see the runners)
    hold.  A foreign exception is reported first, then a foreign warning, then
    an error that names no file.
    """
    runner = RUNNERS[reader]
    escape = unnamed = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = runner(value)
        except DarkpyError as e:
            outcome = type(e).__name__
            if reader in _NAMED_FILE_READERS and e.path is None:
                unnamed = Escape(reader, value, "Escaped", f"error without a file: {type(e).__name__}: {e}",
                                 _where(e.__traceback__), "".join(traceback.format_exception(e))[-4000:])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - this is what we are looking for
            escape = Escape(reader, value, type(e).__name__, str(e)[:500], _where(e.__traceback__),
                            "".join(traceback.format_exception(e))[-4000:])
    if escape is None:
        foreign = [w for w in caught if not issubclass(w.category, DarkpyWarning)]
        if foreign:
            w = foreign[0]
            escape = Escape(reader, value, w.category.__name__, str(w.message)[:500],
                            f"{Path(w.filename).name}:{w.lineno}", "")
    escape = escape or unnamed
    return (None, escape) if escape is not None else (outcome, None)


def assert_only_darkpy_errors(reader, value):
    """For tests: run one input and fail with a reproducer when anything escapes that no known bug explains.

    Known escapes return ``"known: <name>"``.
    """
    outcome, escape = check(reader, value)
    if escape is not None and known(escape) is not None:
        return f"known: {known(escape).name}"
    if escape is not None:
        raise AssertionError(f"{escape.signature}: {escape.message}\ninput: {json.dumps(value)!s:.2000}\n"
                             f"{escape.traceback}")
    return outcome


# ----------------------------------------------------------------------------- the command

def fuzz_reader(reader, seconds, seed_value, tally, chunk=50):
    """Run ``reader``'s strategy for ``seconds``, in chunks of hypothesis examples with distinct seeds."""
    _need_hypothesis()
    deadline = time.monotonic() + seconds
    strategy = STRATEGIES[reader]()
    outcomes = tally.outcomes.setdefault(reader, Counter())
    round_ = 0
    while time.monotonic() < deadline:
        @settings(max_examples=chunk, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @seed(seed_value * 1_000_003 + round_)
        @given(strategy)
        def body(value):
            if time.monotonic() >= deadline:
                return
            tally.tried[reader] += 1
            t0 = time.monotonic()
            outcome, escape = check(reader, value)
            dt = time.monotonic() - t0
            if dt > tally.slowest.get(reader, (0, None))[0]:
                tally.slowest[reader] = (dt, value)
            if escape is None:
                outcomes[outcome] += 1
            else:
                outcomes["ESCAPED"] += 1
                tally.add(escape)
        body()
        round_ += 1


def _report(tally, out_dir, stream):
    print(f"{'reader':<10} {'tried':>8} {'escaped':>8}  outcomes", file=stream)
    for reader in RUNNERS:
        if reader not in tally.outcomes:
            continue
        outcomes = ", ".join(f"{k} {v}" for k, v in tally.outcomes[reader].most_common() if k != "ESCAPED")
        print(f"{reader:<10} {tally.tried[reader]:>8} {tally.escaped[reader]:>8}  {outcomes}", file=stream)
    total = sum(tally.tried.values())
    print(f"{'total':<10} {total:>8} {sum(tally.escaped.values()):>8}", file=stream)
    for reader, (seconds, value) in tally.slowest.items():
        print(f"slowest {reader} input: {seconds:.2f} s: {json.dumps(value)[:160]}", file=stream)
    if not tally.escapes:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"\n{len(tally.escapes)} distinct escapes (smallest input of each written to {out_dir}):", file=stream)
    for k, ((reader, signature), e) in enumerate(sorted(tally.escapes.items())):
        path = out_dir / f"{reader}-{k:02d}.json"
        path.write_text(json.dumps({"reader": reader, "input": e.value, "escaped": e.signature,
                                    "message": e.message}, indent=1))
        bug = known(e)
        label = f"known bug {bug.name} ({bug.fix})" if bug else "NEW"
        print(f"- [{reader}] {signature}: {e.message[:200]}\n  {label}\n"
              f"  reproduce: python -m darkpy.fuzz --replay {path}", file=stream)


def replay(path):
    """Re-run one reproducer file, letting whatever escapes propagate."""
    data = json.loads(Path(path).read_text())
    print(f"[{data['reader']}] {data.get('escaped', '')}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("default", DarkpyWarning)
        print(RUNNERS[data["reader"]](data["input"]))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m darkpy.fuzz",
                                description="Fuzz darkpy's readers: only darkpy errors may escape.")
    p.add_argument("--budget-seconds", type=float, default=60.0,
                   help="total time, shared equally by the readers (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first chunk (default 0)")
    p.add_argument("--reader", action="append", choices=sorted(RUNNERS),
                   help="fuzz only this reader (repeatable; default all)")
    p.add_argument("--out", default="fuzz-escapes", help="folder for reproducer files (default ./fuzz-escapes)")
    p.add_argument("--max-memory-gib", type=float, default=8.0,
                   help="address-space limit of the fuzzing process (default 8; 0: none)")
    p.add_argument("--allow-known", action="store_true",
                   help="exit 0 when every escape is a known, reported bug (see KNOWN)")
    p.add_argument("--replay", metavar="FILE", help="re-run one reproducer file with its traceback")
    args = p.parse_args(argv)
    if st is None:
        print("darkpy.fuzz: error: hypothesis is not installed (pip install 'darkpy[test]')", file=sys.stderr)
        return 2
    if args.replay:
        replay(args.replay)
        return 0
    readers = args.reader or list(RUNNERS)
    if args.max_memory_gib > 0:  # a runaway allocation becomes a MemoryError (an escape) instead of swapping
        try:
            import resource
            limit = int(args.max_memory_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (ImportError, ValueError, OSError):
            pass
    tally = Tally()
    share = args.budget_seconds / len(readers)
    t0 = time.monotonic()
    for reader in readers:
        print(f"fuzzing {reader} for {share:.0f} s (seed {args.seed}) ...", file=sys.stderr, flush=True)
        fuzz_reader(reader, share, args.seed, tally)
    print(f"\n{sum(tally.tried.values())} inputs in {time.monotonic() - t0:.0f} s, seed {args.seed}")
    _report(tally, Path(args.out), sys.stdout)
    new = [e for e in tally.escapes.values() if known(e) is None]
    if args.allow_known:
        return 1 if new else 0
    return 1 if tally.escapes else 0


if __name__ == "__main__":
    sys.exit(main())
