"""Bad input never crashes, never corrupts (issue 6): one test per class of bad input.

Every class is checked twice: through the Python API (the typed exception, its
file/line/layer, what was found and what was expected) and through the
``darkpy`` command, in process (exit status 2, exactly one ``darkpy: error:``
line naming the file, no traceback).  Outputs are checked for atomicity and for
refusing to overwrite inputs.

Tests marked ``xfail(strict=True)`` are bugs found by this audit in files other
engineers own; each reason names the file and the fix.  When a fix lands the
test passes, strict xfail turns that into a failure, and the marker goes.
"""

import json
import os
import shutil
import struct
import sys
import warnings

import numpy as np
import pytest

from conftest import GOLDEN
from darkpy.cli import main
from darkpy.description import parse_cfg_text, parse_yaml_text
from darkpy.dump import read_case
from darkpy.errors import (CfgError, DarkpyError, DarkpyWarning, DumpError, MemoryLimitError, ShapeError,
                           WeightsError)
from darkpy.network import (backward_network, build_network, forward_network, get_current_rate,
                            randomize_parameters, update_network)
from darkpy.weights import load_weights, save_weights

NET = "[net]\nbatch=1\nwidth=8\nheight=8\nchannels=3\n"  # lines 1-5; the next section starts at line 6
CONV = "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"  # 4 lines


def cli(capsys, *argv):
    """Run ``darkpy argv`` in process: (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err, *words):
    """stderr is exactly one ``darkpy: error:`` line holding every word, and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("darkpy: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert str(word) in lines[0], (word, lines[0])


@pytest.fixture
def shown_warnings(monkeypatch):
    """Let warnings reach stderr as they do outside pytest (pytest records them instead)."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    warnings.simplefilter("always")


def build(text, path="t.cfg", **kw):
    reader = parse_yaml_text if str(path).endswith(".yaml") else parse_cfg_text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarkpyWarning)
        return build_network(reader(text, str(path)), **kw)


# ----------------------------------------------------------------------------- cfg

#: (id, cfg text, exception, line, words the message must hold)
BAD_CFGS = [
    ("unknown-section", NET + "[convolution]\nfilters=2\n", CfgError, 6, ["unknown section", "[convolution]"]),
    ("line-without-equals", NET + "[convolutional]\nfilters 2\nsize=1\n", CfgError, 7,
     ["'filters2'", "expected key=value"]),
    ("option-before-section", "batch=1\n" + NET, CfgError, 1, ["before the first [section]"]),
    ("value-missing", NET + "[convolutional]\nfilters=\n", CfgError, 7, ["'filters'", "no value"]),
    ("nul-character", NET + "[conv\0]\n", CfgError, 6, ["NUL"]),
    ("non-numeric-int", NET + "[convolutional]\nfilters=abc\nsize=1\n", CfgError, 7,
     ["'filters' = 'abc'", "expected an integer"]),
    ("fraction-for-int", NET + "[convolutional]\nfilters=2\nsize=1.5\n", CfgError, 8,
     ["'size' = '1.5'", "expected an integer"]),
    ("non-numeric-float", NET + "learning_rate=1..2\n[avgpool]\n", CfgError, 6,
     ["'learning_rate' = '1..2'", "expected a decimal number"]),
    ("bad-int-list", NET + CONV + "[route]\nlayers=0,,\n", CfgError, 11,
     ["'layers' = '0,,'", "list of integers"]),
    ("zero-filters", NET + "[convolutional]\nfilters=0\nsize=1\n", CfgError, 7, ["filters=0", "at least 1"]),
    ("negative-size", NET + "[convolutional]\nfilters=2\nsize=-3\n", CfgError, 8, ["size=-3", "at least 1"]),
    ("zero-stride", NET + "[convolutional]\nfilters=2\nsize=1\nstride=0\n", CfgError, 9, ["stride=0"]),
    ("zero-groups", NET + "[convolutional]\nfilters=2\nsize=1\ngroups=0\n", CfgError, 9, ["groups=0"]),
    ("negative-width", "[net]\nbatch=1\nwidth=-8\nheight=8\nchannels=3\n[avgpool]\n", CfgError, 3,
     ["width=-8", "non-negative"]),
    ("zero-batch", "[net]\nbatch=0\nwidth=8\nheight=8\nchannels=3\n[avgpool]\n", CfgError, 2, ["batch=0"]),
    ("zero-subdivisions", NET + "subdivisions=0\n[avgpool]\n", CfgError, 6, ["subdivisions=0", "positive"]),
    ("no-input-size", "[net]\nbatch=1\n[avgpool]\n", CfgError, 1, ["no input size", "height, width and channels"]),
    ("zero-connected-output", NET + "[connected]\noutput=0\n", CfgError, 7, ["output=0", "at least 1"]),
    ("zero-maxpool-stride", NET + "[maxpool]\nsize=2\nstride=0\n", CfgError, 6, ["stride=0", "positive"]),
    ("zero-upsample-stride", NET + "[upsample]\nstride=0\n", CfgError, 6, ["stride=0"]),
    ("crop-too-large", NET + "[crop]\ncrop_height=20\ncrop_width=20\n", CfgError, 6, ["crop 20x20", "8x8 input"]),
    ("route-index-past-end", NET + CONV + "[route]\nlayers=5\n", CfgError, 10,
     ["layers=5", "expected an earlier layer (0..0)"]),
    ("route-index-before-start", NET + CONV + "[route]\nlayers=-5\n", CfgError, 10,
     ["layers=-5", "expected an earlier layer"]),
    ("route-itself", NET + CONV + "[route]\nlayers=1\n", CfgError, 10, ["refers to layer 1"]),
    ("route-without-layers", NET + CONV + "[route]\n", CfgError, 10, ["needs layers="]),
    ("shortcut-index-past-end", NET + CONV + "[shortcut]\nfrom=7\n", CfgError, 10,
     ["from=7", "expected an earlier layer"]),
    ("route-shape-mismatch", NET + CONV + "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1\n", ShapeError, 13,
     ["routed layer 1 outputs 4x4 but layer 0 outputs 8x8", "same width and height"]),
    ("yolo-filters-mismatch", NET + "[convolutional]\nfilters=4\nsize=1\n[yolo]\nmask=0\nanchors=1,1\n"
                                    "classes=2\nnum=1\n", ShapeError, 9, ["filters=7"]),
    ("groups-not-dividing-channels", NET + "[convolutional]\nfilters=2\nsize=1\ngroups=2\n", ShapeError, 9,
     ["3 input channels", "groups=2"]),
    ("kernel-larger-than-input", NET + "[convolutional]\nfilters=2\nsize=20\n", ShapeError, 8,
     ["size=20", "8x8 input", "-11x-11 output"]),
    ("reorg-stride-not-dividing", NET + "[reorg]\nstride=3\n", ShapeError, 6, ["stride=3", "multiple of"]),
    ("softmax-groups-not-dividing", NET + "[softmax]\ngroups=5\n", ShapeError, 6, ["groups=5", "192 inputs"]),
    ("conv-after-flat-layer", "[net]\nbatch=1\ninputs=10\n[convolutional]\nfilters=3\nsize=1\n", ShapeError, 4,
     ["must output an image"]),
    ("duplicate-net", NET + "[net]\nbatch=1\n" + CONV, CfgError, 6, ["a second [net]"]),
    ("missing-net", CONV, CfgError, 1, ["first section must be [net]", "[convolutional]"]),
    ("no-sections", "# only a comment\n", CfgError, None, ["no sections"]),
    ("no-layers", NET, CfgError, None, ["no layers after [net]"]),
    # darknet goes on with relu / with a constant rate / with layer 0: darkpy stops.
    ("unknown-activation", NET + "[convolutional]\nfilters=2\nsize=1\nactivation=foo\n", CfgError, 9,
     ["unknown activation 'foo'", "leaky"]),
    ("unknown-policy", NET + "policy=wavy\n[avgpool]\n", CfgError, 6, ["policy=wavy", "steps"]),
    ("steps-without-scales", NET + "policy=steps\nsteps=10,20\n[avgpool]\n", CfgError, 1, ["steps= and scales="]),
    ("unsupported-layer-type", NET + "[local]\n", CfgError, 6, ["[local]", "not supported"]),
    ("first-layer-dropout", NET + "[dropout]\n", CfgError, 6, ["dropout"]),
    ("missing-tree-file", NET + "[softmax]\ntree=nowhere.tree\n", CfgError, 6, ["nowhere.tree"]),
]


@pytest.mark.parametrize("text, exc, line, words", [c[1:] for c in BAD_CFGS], ids=[c[0] for c in BAD_CFGS])
def test_bad_cfg_raises_typed_error_naming_file_and_line(text, exc, line, words):
    with pytest.raises(exc) as info:
        build(text)
    e = info.value
    assert type(e) is exc, f"{type(e).__name__}: {e}"
    assert e.path == "t.cfg" and e.line == line
    assert str(e).startswith("t.cfg" if line is None else f"t.cfg:{line}")
    for word in words:
        assert word in str(e), (word, str(e))


@pytest.mark.parametrize("text, exc, line, words", [c[1:] for c in BAD_CFGS], ids=[c[0] for c in BAD_CFGS])
def test_bad_cfg_on_the_command_line_exits_2_with_one_line(text, exc, line, words, tmp_path, capsys):
    path = tmp_path / "t.cfg"
    path.write_text(text)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 2
    assert_one_line_error(err, f"{path}:{line}" if line is not None else str(path), *words)


def test_layer_errors_name_the_layer_index():
    with pytest.raises(CfgError) as info:
        build(NET + CONV + CONV + "[route]\nlayers=9\n")
    assert info.value.layer == 2 and info.value.section == "route"
    assert "[route] layer 2:" in str(info.value)


def test_unknown_option_is_an_error_naming_file_and_line(tmp_path, capsys):
    """darknet only prints "Unused field"; a misspelt option would build another network: darkpy stops."""
    text = NET + "[avgpool]\nfilterz=3\n"
    with pytest.raises(CfgError, match=r"t\.cfg:7 \[avgpool\] layer 0: option 'filterz = 3' is not one"):
        build_network(parse_cfg_text(text, "t.cfg"))
    path = tmp_path / "t.cfg"
    path.write_text(text)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 2
    assert_one_line_error(err, f"{path}:7", "filterz", "--allow-unused")


def test_allow_unused_downgrades_to_darknets_warning(tmp_path, capsys, shown_warnings):
    text = NET + "[avgpool]\nfilterz=3\n"
    with pytest.warns(DarkpyWarning, match=r"t\.cfg:7: \[avgpool\] unused option 'filterz = 3'"):
        build_network(parse_cfg_text(text, "t.cfg"), allow_unused=True)
    path = tmp_path / "t.cfg"
    path.write_text(text)
    rc, out, err = cli(capsys, "info", "--allow-unused", path)
    assert rc == 0 and "unused option 'filterz = 3'" in err
    import darkpy.network
    assert darkpy.network.ALLOW_UNUSED is False  # the command's option does not outlive it


def test_forward_and_backward_commands_report_cfg_errors_too(tmp_path, capsys):
    path = tmp_path / "t.cfg"
    path.write_text(NET + "[convolutional]\nfilters=abc\n")
    for command in ("forward", "backward"):
        rc, out, err = cli(capsys, command, path)
        assert rc == 2
        assert_one_line_error(err, f"{path}:7", "'filters' = 'abc'")


def test_missing_and_unreadable_description(tmp_path, capsys):
    rc, out, err = cli(capsys, "info", tmp_path / "nowhere.cfg")
    assert rc == 2
    assert_one_line_error(err, "nowhere.cfg", "No such file")
    bad = tmp_path / "latin1.cfg"
    bad.write_bytes(NET.encode() + b"[conv\xe9]\n")
    rc, out, err = cli(capsys, "info", bad)
    assert rc == 2
    assert_one_line_error(err, f"{bad}:6", "not UTF-8", "0xe9")
    rc, out, err = cli(capsys, "info", tmp_path)
    assert rc == 2
    assert_one_line_error(err, str(tmp_path), "cannot read")


# ----------------------------------------------------------------------------- YAML

NETY = "net:\n  batch: 1\n  width: 8\n  height: 8\n  channels: 3\n"  # lines 1-5

BAD_YAMLS = [
    ("syntax-error", "net:\n  batch: 1\n  width: [8\n", 4, ["YAML", "expected ',' or ']'"]),
    ("unknown-top-level-key", "net: {batch: 1}\nlayrs: []\n", 2, ["unknown top-level key 'layrs'"]),
    ("unknown-layer-type", NETY + "layers:\n- type: convolution\n", 7, ["unknown layer type 'convolution'"]),
    ("layer-not-a-mapping", NETY + "layers:\n- 5\n", 7, ["must be a mapping starting with 'type:'"]),
    ("duplicate-net", "net: {}\nnetwork: {}\n", 2, ["a second 'network:'"]),
    ("missing-net", "layers: []\n", None, ["no 'net:' mapping"]),
    ("nested-list-value", NETY + "layers:\n- type: route\n  layers: [[1]]\n", 8, ["nested lists"]),
    ("non-numeric-value", NETY + "layers:\n- type: convolutional\n  filters: many\n", 8,
     ["'filters' = 'many'", "expected an integer"]),
    ("route-index-out-of-range", NETY + "layers:\n- type: convolutional\n  filters: 2\n  size: 1\n"
                                        "- type: route\n  layers: [-5]\n", 10, ["layers=-5", "earlier layer"]),
    ("empty-document", "", None, ["empty YAML document"]),
]


@pytest.mark.parametrize("text, line, words", [c[1:] for c in BAD_YAMLS], ids=[c[0] for c in BAD_YAMLS])
def test_bad_yaml_raises_cfg_error_naming_file_and_line(text, line, words, tmp_path, capsys):
    with pytest.raises(CfgError) as info:
        build(text, "t.yaml")
    assert info.value.path == "t.yaml" and info.value.line == line
    for word in words:
        assert word in str(info.value)
    path = tmp_path / "t.yaml"
    path.write_text(text)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 2
    assert_one_line_error(err, f"{path}:{line}" if line is not None else str(path), *words)


def test_converted_yaml_never_reads_back_as_a_different_network(tmp_path, capsys):
    src = tmp_path / "t.cfg"
    src.write_text("[net]\nb\x85atch=1\nwidth=8\nheight=8\nchannels=3\n[avgpool]\n")
    rc, _, err = cli(capsys, "convert", src, tmp_path / "t.yaml")
    if rc == 2:
        assert_one_line_error(err, str(src))
        return
    again = parse_yaml_text((tmp_path / "t.yaml").read_text())
    assert again.same_as(parse_cfg_text(src.read_text()))


# ----------------------------------------------------------------------------- memory limit

def test_memory_limit_error_names_layer_and_size(tmp_path):
    with pytest.raises(MemoryLimitError) as info:
        build(NET + CONV + "[convolutional]\nfilters=64\nsize=3\npad=1\n", memory_limit=20_000)
    e = info.value
    assert e.layer == 1 and e.line == 10 and e.path == "t.cfg"
    assert "over the limit of 20000" in str(e) and "needs a buffer of" in str(e)


def test_memory_limit_is_checked_before_numpy_allocates(monkeypatch):
    """The refused buffer is never requested from numpy: the budget is charged first."""
    import darkpy.layer
    requested = []
    real = darkpy.layer.np.zeros
    monkeypatch.setattr(darkpy.layer.np, "zeros", lambda *a, **k: requested.append(a[0]) or real(*a, **k))
    with pytest.raises(MemoryLimitError) as info:
        build(NET + CONV + "[convolutional]\nfilters=64\nsize=3\npad=1\n", memory_limit=20_000)
    needed = int(str(info.value).split("buffer of ")[1].split(" bytes")[0])
    assert requested and sum(n * 4 for n in requested) <= 20_000  # numpy never saw the refused buffer
    assert sum(n * 4 for n in requested) + needed > 20_000  # ... which is what would cross the limit


HUGE = "[net]\nbatch=64\nwidth=100000\nheight=100000\nchannels=3\n[convolutional]\nfilters=64\nsize=3\n"


def test_huge_network_hits_the_memory_limit_before_allocating():
    with pytest.raises(MemoryLimitError, match="bytes"):
        build(HUGE)


def test_huge_network_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "huge.cfg"
    path.write_text(HUGE)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 2
    assert_one_line_error(err, f"{path}:1", "the input buffer needs", "bytes")


def test_workspace_counts_against_the_memory_limit():
    # 1x8x8 input, size=700 with pad=1: out 9x9, weights 2 MB, im2col workspace 159 MB
    with pytest.raises(MemoryLimitError):
        build("[net]\nbatch=1\nwidth=8\nheight=8\nchannels=1\n[convolutional]\nfilters=1\nsize=700\npad=1\n",
              memory_limit=4 * 2**20)


# ----------------------------------------------------------------------------- bugs in layer modules

def test_shortcut_unknown_activation_names_file_and_line():
    with pytest.raises(CfgError) as info:
        build(NET + CONV + "[shortcut]\nfrom=-1\nactivation=bogus\n")
    assert info.value.path == "t.cfg" and info.value.line is not None and info.value.layer == 1


def test_errors_from_make_layer_name_file_and_layer():
    with pytest.raises(ShapeError, match="w must be at least 1") as info:
        build(NET + "[connected]\noutput=28\n[detection]\nclasses=2\ncoords=4\nside=2\nnum=1\n[batchnorm]\n")
    assert info.value.path == "t.cfg" and info.value.line == 13 and info.value.layer == 2


def test_errors_in_the_loops_name_the_layer():
    net = build(NET + "[connected]\noutput=4\n[softmax]\n[connected]\noutput=2\n")
    net.train = 1
    with pytest.raises(DarkpyError) as info:
        forward_network(net)
    assert info.value.layer == 1 and info.value.path == "t.cfg"


def test_unknown_cost_type_is_an_error():
    with pytest.raises(CfgError, match=r"t\.cfg:7 \[cost\].*type=foo: expected one of"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DarkpyWarning)
            build_network(parse_cfg_text(NET + "[cost]\ntype=foo\n", "t.cfg"))


def _train_once(net):
    randomize_parameters(net, 0)
    net.train = 1
    net.seen += net.batch
    forward_network(net)
    backward_network(net)
    update_network(net)


def test_first_layer_batchnorm_trains_or_is_refused():
    try:
        net = build(NET + "[batchnorm]\n")
    except CfgError:
        return
    _train_once(net)


def test_step_policy_with_zero_step_is_refused():
    with pytest.raises(CfgError, match="step=0"):
        build(NET + "policy=step\nstep=0\n[avgpool]\n")


def test_learning_rate_overflow_gives_inf_as_c():
    net = build(NET + "policy=exp\ngamma=2\n[avgpool]\n")
    net.seen = 5000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_current_rate(net) == np.float32(np.inf)


# ----------------------------------------------------------------------------- .weights

SMALL = NET + "[convolutional]\nbatch_normalize=1\nfilters=2\nsize=3\npad=1\nactivation=leaky\n" \
              "[connected]\noutput=3\nactivation=linear\n"


@pytest.fixture
def weights_file(tmp_path):
    net = build(SMALL)
    randomize_parameters(net, 0)
    path = tmp_path / "w.weights"
    save_weights(net, path)
    return path


def _snapshot(net):
    return [(f, getattr(l, f).copy()) for l in net.layers
            for f in ("weights", "biases", "scales", "rolling_mean", "rolling_variance") if getattr(l, f) is not None]


def _unchanged(before, net):
    return all(a.tobytes() == b.tobytes() for (f, a), (_, b) in zip(before, _snapshot(net)))


def test_weights_wrong_header(tmp_path, capsys):
    path = tmp_path / "h.weights"
    path.write_bytes(struct.pack("<ii", 0, 2) + b"\0\0")
    net = build(SMALL)
    with pytest.raises(WeightsError, match=r"header needs 12 bytes .* file has 10"):
        load_weights(net, path)
    path.write_bytes(struct.pack("<iii", 0, 2, 0) + b"\0\0")
    with pytest.raises(WeightsError, match=r"version 0\.2\.0 needs 20 bytes \(seen as a 64-bit size_t\)"):
        load_weights(net, path)
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", path)
    assert rc == 2
    assert_one_line_error(err, str(path), "needs 20 bytes")


def test_truncated_weights_name_layer_tensor_and_shortfall(weights_file, tmp_path, capsys):
    data = weights_file.read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-6])        # the connected layer's weights lack 1.5 floats
    net = build(SMALL)
    before = _snapshot(net)
    with pytest.raises(WeightsError) as info:
        load_weights(net, short)
    e = info.value
    assert e.layer == 1 and e.section == "connected" and e.path == str(short)
    assert "needed 384 floats for weights, file has 382 (and 2 stray bytes) left" in str(e)
    assert _unchanged(before, net), "a refused file must leave the network untouched"
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", short)
    assert rc == 2
    assert_one_line_error(err, str(short), "[connected] layer 1", "needed 384 floats")


def test_leftover_bytes_warn_with_their_count(weights_file, tmp_path, capsys, shown_warnings):
    long = tmp_path / "long.weights"
    long.write_bytes(weights_file.read_bytes() + b"12345678")
    with pytest.warns(DarkpyWarning, match="8 bytes left over after the last layer"):
        load_weights(build(SMALL), long)
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", long)
    assert rc == 0 and "8 bytes left over" in err


def test_nan_and_inf_weights_warn_naming_the_layer(weights_file, tmp_path, capsys, shown_warnings):
    net = build(SMALL)
    load_weights(net, weights_file)
    net.layers[1].weights[4] = np.inf
    net.layers[0].biases[1] = np.nan
    bad = tmp_path / "nan.weights"
    save_weights(net, bad)
    with pytest.warns(DarkpyWarning) as record:
        load_weights(build(SMALL), bad)
    messages = [str(w.message) for w in record]
    assert any("layer 0 (convolutional): biases holds 1 NaN and 0 infinite" in m for m in messages)
    assert any("layer 1 (connected): weights holds 0 NaN and 1 infinite" in m and "index 4" in m for m in messages)
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", bad)
    assert rc == 0 and "biases holds 1 NaN" in err


def test_cli_prints_each_warning_on_one_line(weights_file, tmp_path, capsys, shown_warnings):
    long = tmp_path / "long.weights"
    long.write_bytes(weights_file.read_bytes() + b"1234")
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", long)
    assert rc == 0
    assert err.splitlines() == [f"darkpy: warning: {long}: 4 bytes left over after the last layer's weights: "
                                "the network may not be the one this file was saved from"]


def test_missing_weights_file(tmp_path, capsys):
    with pytest.raises(WeightsError, match="No such file"):
        load_weights(build(SMALL), tmp_path / "nowhere.weights")
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, out, err = cli(capsys, "forward", cfg, "--weights", tmp_path / "nowhere.weights")
    assert rc == 2
    assert_one_line_error(err, "nowhere.weights", "No such file")


def test_wrong_input_file_size_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    raw = tmp_path / "in.f32"
    np.zeros(5, "<f4").tofile(raw)
    rc, out, err = cli(capsys, "forward", cfg, "--input", raw)
    assert rc == 2
    assert_one_line_error(err, str(raw), "holds 5 float32 values; the network needs 192")


# ----------------------------------------------------------------------------- dumps

CASE = GOLDEN / "bn-b1c3h1w2"


@pytest.fixture
def case(tmp_path):
    path = tmp_path / "case"
    shutil.copytree(CASE, path)
    return path


def _manifest(case):
    return json.loads((case / "case.json").read_text())


def _edit(case, fn):
    m = _manifest(case)
    fn(m)
    (case / "case.json").write_text(json.dumps(m))


def _tensor(case, name):
    return next(t for t in _manifest(case)["tensors"] if t["name"] == name)


def _set_entry(index, **fields):
    return lambda m: m["tensors"][index].update(fields)


BAD_DUMPS = [
    ("missing-directory", lambda c: shutil.rmtree(c), "", ["not a dump directory"]),
    ("missing-manifest", lambda c: (c / "case.json").unlink(), "case.json", ["cannot read the manifest"]),
    ("invalid-json", lambda c: (c / "case.json").write_text('{"format": "darkpy-dump/1",\n  "kind": }'),
     "case.json:2", ["not valid JSON"]),
    ("manifest-not-an-object", lambda c: (c / "case.json").write_text("[1, 2]"), "case.json",
     ["must be a JSON object"]),
    ("wrong-format", lambda c: _edit(c, lambda m: m.update(format="darkpy-dump/9")), "case.json",
     ["format is 'darkpy-dump/9'", "expected 'darkpy-dump/1'"]),
    ("unknown-kind", lambda c: _edit(c, lambda m: m.update(kind="lstm")), "case.json",
     ["kind is 'lstm'", "batchnorm, convolutional, network"]),
    ("params-not-an-object", lambda c: _edit(c, lambda m: m.update(params=[1])), "case.json",
     ["params must be a JSON object"]),
    ("tensors-not-a-list", lambda c: _edit(c, lambda m: m.update(tensors={})), "case.json",
     ["tensors must be a list"]),
    ("tensor-not-an-object", lambda c: _edit(c, lambda m: m["tensors"].__setitem__(0, "input")), "case.json",
     ["tensors[0] must be an object"]),
    ("tensor-without-name", lambda c: _edit(c, lambda m: m["tensors"][0].pop("name")), "case.json",
     ["tensors[0].name must be a non-empty string"]),
    ("duplicate-tensor", lambda c: _edit(c, lambda m: m["tensors"].append(dict(m["tensors"][0]))), "case.json",
     ["'input' is listed twice"]),
    ("file-outside-the-case", lambda c: _edit(c, _set_entry(0, file="../input.f32")), "case.json",
     ["plain file name", "'../input.f32'"]),
    ("negative-shape", lambda c: _edit(c, _set_entry(0, shape=[1, -3])), "case.json",
     ["shape must be a list of non-negative integers", "[1, -3]"]),
    ("boolean-shape", lambda c: _edit(c, _set_entry(0, shape=[True])), "case.json", ["non-negative integers"]),
    ("unknown-stage", lambda c: _edit(c, _set_entry(0, stage="later")), "case.json",
     ["stage is 'later'", "given, forward, backward, update"]),
    ("missing-tensor-file", lambda c: (c / "input.f32").unlink(), "input.f32", ["'input'", "is missing"]),
    ("size-disagrees-with-manifest", lambda c: (c / "input.f32").write_bytes(b"\0" * 20), "input.f32",
     ["20 bytes, but shape [1, 3, 1, 2] of float32 needs 24"]),
    ("float64-data", lambda c: (c / "input.f32").write_bytes(b"\0" * 48), "input.f32",
     ["48 bytes", "float64 data?"]),
    ("not-whole-floats", lambda c: (c / "input.f32").write_bytes(b"\0" * 23), "input.f32",
     ["not a whole number of float32 values"]),
]


@pytest.mark.parametrize("mutate, where, words", [c[1:] for c in BAD_DUMPS], ids=[c[0] for c in BAD_DUMPS])
def test_bad_dump_raises_dump_error_naming_the_file(case, mutate, where, words, capsys):
    mutate(case)
    with pytest.raises(DumpError) as info:
        read_case(case)
    text = str(info.value)
    assert text.startswith(str(case / where) if where else str(case)), text
    for word in words:
        assert word in text, (word, text)
    for argv in (["check", case], ["compare", CASE, case]):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2
        assert_one_line_error(err, *words)


def test_deeply_nested_manifest_is_a_dump_error(case):
    (case / "case.json").write_text("[" * 100_000)
    with pytest.raises(DumpError, match="JSON"):
        read_case(case)


def test_overlong_tensor_file_name_is_a_dump_error(case):
    _edit(case, _set_entry(0, file="a" * 5000))
    with pytest.raises(DumpError):
        read_case(case)


CHECK_BUGS = [
    ("params-batch-not-a-number", lambda c: _edit(c, lambda m: m["params"].update(batch="two"))),
    ("params-batch-missing-value", lambda c: _edit(c, lambda m: m["params"].update(batch=None))),
    ("given-tensor-wrong-size", lambda c: (_edit(c, lambda m: next(t for t in m["tensors"] if t["name"] == "scales")
                                                 .update(shape=[2])),
                                           (c / _tensor(c, "scales")["file"]).write_bytes(b"\0" * 8))),
    ("given-tensor-broadcast", lambda c: (_edit(c, lambda m: next(t for t in m["tensors"] if t["name"] == "scales")
                                                .update(shape=[1])),
                                          (c / _tensor(c, "scales")["file"]).write_bytes(b"\0" * 4))),
]


@pytest.mark.parametrize("mutate", [c[1] for c in CHECK_BUGS], ids=[c[0] for c in CHECK_BUGS])
def test_check_refuses_inconsistent_params_and_given_tensors(case, mutate):
    from darkpy.check import check_case
    mutate(case)
    with pytest.raises(DumpError):
        check_case(case)


def test_check_refuses_non_string_weights_param(tmp_path):
    from darkpy.check import check_case
    case = tmp_path / "net"
    shutil.copytree(GOLDEN / "net-cls-mini", case)
    _edit(case, lambda m: m["params"].update(weights=7))
    with pytest.raises(DumpError):
        check_case(case)


# ----------------------------------------------------------------------------- outputs: atomic, no overwriting

def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_dump_refuses_an_existing_directory_without_force(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    out = tmp_path / "dump"
    assert cli(capsys, "forward", cfg, "--dump", out)[0] == 0
    before = _tree(out)
    rc, _, err = cli(capsys, "forward", cfg, "--seed", 3, "--dump", out)
    assert rc == 2
    assert_one_line_error(err, str(out), "exists", "--force")
    assert _tree(out) == before
    assert cli(capsys, "forward", cfg, "--seed", 3, "--dump", out, "--force")[0] == 0
    assert _tree(out) != before and read_case(out).kind == "network"


def test_interrupted_dump_leaves_the_old_one_intact(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    out = tmp_path / "dump"
    assert cli(capsys, "forward", cfg, "--dump", out)[0] == 0
    before = _tree(out)

    def interrupted(manifest):
        raise KeyboardInterrupt

    monkeypatch.setattr("darkpy.dump._manifest_text", interrupted)
    rc, _, err = cli(capsys, "forward", cfg, "--seed", 5, "--dump", out, "--force")
    assert rc == 130 and "interrupted" in err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "t.cfg"], "temporary directory left behind"


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, _, err = cli(capsys, "convert", cfg, cfg)
    assert rc == 2
    assert_one_line_error(err, str(cfg), "refusing to overwrite an input")
    assert cfg.read_text() == SMALL
    assert cli(capsys, "convert", cfg, cfg, "--force")[0] == 0
    assert parse_cfg_text(cfg.read_text()).same_as(parse_cfg_text(SMALL))


def test_interrupted_convert_leaves_the_old_output_intact(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    out = tmp_path / "t.yaml"
    out.write_text("old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    rc, _, err = cli(capsys, "convert", cfg, out)
    assert rc == 2
    assert_one_line_error(err, str(out), "No space left")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.cfg", "t.yaml"], "temporary file left behind"


def test_convert_to_an_unknown_format(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, _, err = cli(capsys, "convert", cfg, tmp_path / "t.txt")
    assert rc == 2
    assert_one_line_error(err, "t.txt", "name it .cfg, .yaml or .yml")


def test_check_json_refuses_to_overwrite_the_manifest(case, capsys):
    manifest = (case / "case.json").read_bytes()
    rc, _, err = cli(capsys, "check", case, "--json", case / "case.json")
    assert (case / "case.json").read_bytes() == manifest
    assert rc == 2


def test_check_json_is_written_atomically(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rows.json"
    out.write_text("old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)   # an atomic writer syncs before it renames
    cli(capsys, "check", case, "--json", out)
    assert out.read_text() == "old\n"


def test_dump_into_an_impossible_place_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    rc, _, err = cli(capsys, "forward", cfg, "--dump", cfg / "dump")
    assert rc == 2
    assert_one_line_error(err, str(cfg / "dump"))


def test_check_json_into_a_missing_folder_is_an_error(case, tmp_path, capsys):
    rc, _, err = cli(capsys, "check", case, "-q", "--json", tmp_path / "nowhere" / "rows.json")
    assert rc == 2
    assert_one_line_error(err, "rows.json")


def test_failed_dump_cleans_up_its_temporary_directory(tmp_path, capsys):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(SMALL)
    (tmp_path / "dump").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = cli(capsys, "forward", cfg, "--dump", tmp_path / "dump")
    assert rc == 2
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ----------------------------------------------------------------------------- the command itself

def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(NET + "[convolutional]\nfilters=abc\n")
    with pytest.raises(CfgError):
        main(["info", "--debug", str(cfg)])


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("darkpy.description.load", interrupted)
    rc, _, err = cli(capsys, "info", tmp_path / "t.cfg")
    assert rc == 130 and err.strip() == "darkpy: interrupted"


def test_usage_errors_are_argparses_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["forward", "x.cfg", "--batch", "two"])
    assert info.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_every_error_class_is_a_darkpy_error():
    for exc in (CfgError, ShapeError, MemoryLimitError, WeightsError, DumpError):
        assert issubclass(exc, DarkpyError)
    assert issubclass(ShapeError, CfgError) and issubclass(MemoryLimitError, CfgError)
    assert issubclass(DarkpyWarning, UserWarning)


def test_locate_fills_in_only_the_missing_location():
    e = ShapeError("batchnorm: w must be at least 1, got 0")
    assert str(e) == "batchnorm: w must be at least 1, got 0"
    assert e.locate(path="t.cfg", line=8, section="batchnorm", layer=1) is e
    assert str(e) == "t.cfg:8 [batchnorm] layer 1: batchnorm: w must be at least 1, got 0"
    e = CfgError("bad", path="a.cfg", line=3)
    e.locate(path="b.cfg", line=9, layer=2)
    assert str(e) == "a.cfg:3 layer 2: bad" and (e.path, e.line, e.layer) == ("a.cfg", 3, 2)
    with pytest.raises(ShapeError, match=r"^t\.cfg:8 \[batchnorm\] layer 1: w$"):
        raise ShapeError("w").locate(path="t.cfg", line=8, section="batchnorm", layer=1)
