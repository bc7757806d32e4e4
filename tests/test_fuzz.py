"""Property-based fuzzing (issue 6): random and mutated cfg text, YAML, networks, .weights
bytes, dump directories and command lines; only darkpy's own errors may escape.

The strategies and the property live in ``darkpy.fuzz`` (``python -m darkpy.fuzz``
runs them for longer, see FUZZING.md); here each reader gets a small budget so
that the whole file stays under ~30 s.  Escapes explained by a bug already
reported (``darkpy.fuzz.KNOWN``, each with a strict xfail in test_errors.py)
are recorded as hypothesis events instead of failing; anything else fails with
the input that caused it.
"""

import json
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings

from darkpy import fuzz
from darkpy.errors import CfgError, DarkpyError, DarkpyWarning

SMALL = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                       HealthCheck.filter_too_much])


def _run(reader, value):
    event(fuzz.assert_only_darkpy_errors(reader, value))


@settings(SMALL, max_examples=100)
@given(fuzz.cfg_texts())
def test_cfg_reader_only_raises_darkpy_errors(text):
    _run("cfg", text)


@settings(SMALL, max_examples=40)
@given(fuzz.yaml_texts())
def test_yaml_reader_and_builder_only_raise_darkpy_errors(text):
    _run("yaml", text)


@settings(SMALL, max_examples=30)
@given(fuzz.network_texts())
def test_network_builder_and_loops_only_raise_darkpy_errors(text):
    _run("network", text)


@settings(SMALL, max_examples=120)
@given(fuzz.weights_inputs())
def test_weights_reader_only_raises_weights_errors_and_never_half_loads(value):
    _run("weights", value)


@settings(SMALL, max_examples=40)
@given(fuzz.manifest_inputs())
def test_dump_reader_and_check_only_raise_darkpy_errors(value):
    _run("manifest", value)


@settings(SMALL, max_examples=12)
@given(fuzz.cli_inputs())
def test_command_line_exits_0_1_or_2_with_one_line_errors(argv):
    _run("cli", argv)


# ----------------------------------------------------------------------------- the harness itself

def test_seed_networks_build_and_train():
    """The seeds are valid, so mutations start from networks that reach every layer's code."""
    for name, text in fuzz.SEED_CFGS.items():
        assert fuzz.check("network", text) == ("ran", None), name


def test_an_escape_is_caught_with_its_location(monkeypatch):
    def parse(text, path):
        raise ValueError("boom")

    monkeypatch.setattr("darkpy.description.parse_cfg_text", parse)
    outcome, escape = fuzz.check("cfg", "[net]\n")
    assert outcome is None and escape.kind == "ValueError" and escape.message == "boom"
    assert "test_fuzz.py" in escape.where and fuzz.known(escape) is None
    with pytest.raises(AssertionError, match="ValueError"):
        fuzz.assert_only_darkpy_errors("cfg", "[net]\n")


def test_foreign_warnings_and_errors_without_a_file_escape(monkeypatch):
    import warnings

    def parse(text, path):
        warnings.warn("overflow", RuntimeWarning)
        raise CfgError("no file named")

    monkeypatch.setattr("darkpy.description.parse_cfg_text", parse)
    outcome, escape = fuzz.check("cfg", "")
    assert escape.kind == "RuntimeWarning"

    def parse_quietly(text, path):
        warnings.warn("fine", DarkpyWarning)
        raise CfgError("no file named")

    monkeypatch.setattr("darkpy.description.parse_cfg_text", parse_quietly)
    outcome, escape = fuzz.check("cfg", "")
    assert escape.kind == "Escaped" and "error without a file" in escape.message


def test_refused_weights_must_leave_the_network_untouched(monkeypatch):
    from darkpy.errors import WeightsError

    def half_load(net, path):
        net.layers[0].biases[0] += 1
        raise WeightsError("short", path=path)

    monkeypatch.setattr("darkpy.weights.load_weights", half_load)
    outcome, escape = fuzz.check("weights", ["classifier", []])
    assert escape.kind == "Escaped" and "changed the network" in escape.message


def test_command_prints_counts_and_a_reproducer_and_exits_1(monkeypatch, tmp_path, capsys):
    calls = []

    def reader(value):
        calls.append(value)
        if "=" in value:
            raise IndexError("past the end")
        return "parsed"

    monkeypatch.setitem(fuzz.RUNNERS, "cfg", reader)
    rc = fuzz.main(["--budget-seconds", "1", "--reader", "cfg", "--out", str(tmp_path), "--seed", "4"])
    out = capsys.readouterr().out
    assert rc == 1 and calls
    row = next(line.split() for line in out.splitlines() if line.startswith("cfg "))
    assert int(row[1]) == len(calls) and 0 < int(row[2]) <= len(calls)
    assert "IndexError" in out and "NEW" in out and "--replay" in out
    repro = next(tmp_path.glob("cfg-*.json"))
    saved = json.loads(repro.read_text())
    assert saved["reader"] == "cfg" and "=" in saved["input"]
    with pytest.raises(IndexError):
        fuzz.main(["--replay", str(repro)])


def test_command_exits_0_when_nothing_escapes(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(fuzz.RUNNERS, "cfg", lambda value: "parsed")
    assert fuzz.main(["--budget-seconds", "1", "--reader", "cfg", "--out", str(tmp_path)]) == 0
    assert "escaped" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_text_edits():
    text = "[net]\nbatch=1\nwidth=8"
    assert fuzz.apply_text_edits(text, [["value", 1, "-3"]]) == "[net]\nbatch=1\nwidth=-3"
    assert fuzz.apply_text_edits(text, [["delete", 0], ["duplicate", 0]]) == "batch=1\nbatch=1\nwidth=8"
    assert fuzz.apply_text_edits(text, [["swap", 0, 2]]) == "width=8\nbatch=1\n[net]"
    assert fuzz.apply_text_edits(text, [["insert", 1, "[conv]"]]) == "[net]\n[conv]\nbatch=1\nwidth=8"
    assert fuzz.apply_text_edits(text, [["chars", 1, 3, "N"]]) == "[N]\nbatch=1\nwidth=8"


def test_bytes_edits():
    data = struct.pack("<iiiQ", 0, 2, 0, 7) + struct.pack("<2f", 1, 2)
    assert fuzz.apply_bytes_edits(data, [["truncate", 22]]) == data[:22]
    assert struct.unpack("<i", fuzz.apply_bytes_edits(data, [["header", 4, 1001]])[4:8]) == (1001,)
    assert struct.unpack("<2f", fuzz.apply_bytes_edits(data, [["float", 1, "inf"]])[20:]) == (1, float("inf"))


# One input per known bug: each must still escape.  When one stops escaping, its fix
# has landed: delete the entry from darkpy.fuzz.KNOWN and this row.
KNOWN_REPRODUCERS = [
]

# Inputs that escaped before their fix landed: each must now give only darkpy's own errors.
FIXED_REPRODUCERS = [
    ("yaml-line-break-characters", "cfg", "[net]\nb\x85atch=1\n"),
    ("error-without-file", "manifest", ["convolutional", [["set", [3, 0], "bogus"]]]),
    ("check-params", "manifest", ["batchnorm", [["set", [3, 0], "x"]]]),
    ("memory-limit-numpy", "network",
     "[net]\nbatch=64\nwidth=100000\nheight=100000\nchannels=3\n[convolutional]\nfilters=64\nsize=3\n"),
    ("memory-limit-numpy-dimension", "network",
     "[net]\nbatch=1\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2147483647\nsize=2147483647\n"
     "pad=1\n"),
    ("memory-limit-ignores-workspace", "network",
     "[net]\nbatch=1\nwidth=8\nheight=8\nchannels=1\n[convolutional]\nfilters=1\nsize=300\npad=1\n"),
    ("step-zero", "network", "[net]\nbatch=1\nwidth=2\nheight=2\nchannels=1\npolicy=step\nstep=0\n"
                             "[convolutional]\nfilters=1\nsize=1\n"),
    ("first-layer-batchnorm", "network", "[net]\nbatch=2\nwidth=2\nheight=2\nchannels=1\n[batchnorm]\n"),
    ("dump-deep-json", "manifest", ["batchnorm", [["raw", "[" * 5000]]]),
    ("dump-long-name", "manifest", ["batchnorm", [["set", [4, 0, 0], "x" * 300]]]),
    ("dump-write-os-error", "cli", ["forward", "@cfg", "--dump", "@underfile"]),
    ("check-json-os-error", "cli", ["check", "@case", "--json", "@underfile"]),
    ("cli-temporary-directory", "cli", ["forward", "@cfg", "--dump", "@case"]),
    ("check-json-overwrites-input", "cli", ["check", "@case", "--json", "@casejson"]),
]


@pytest.mark.parametrize("name, reader, value", KNOWN_REPRODUCERS, ids=[k[0] for k in KNOWN_REPRODUCERS])
def test_known_bugs_still_escape(name, reader, value):
    outcome, escape = fuzz.check(reader, value)
    assert escape is not None, f"{name} no longer escapes ({outcome}): remove it from darkpy.fuzz.KNOWN"
    assert fuzz.known(escape) is not None and fuzz.known(escape).name == name, escape


@pytest.mark.parametrize("name, reader, value", FIXED_REPRODUCERS, ids=[k[0] for k in FIXED_REPRODUCERS])
def test_fixed_bugs_stay_fixed(name, reader, value):
    outcome, escape = fuzz.check(reader, value)
    assert escape is None, f"{name} escapes again: {escape}"


def test_every_known_bug_has_a_reproducer():
    names = {k.name for k in fuzz.KNOWN}
    assert names == {k[0] for k in KNOWN_REPRODUCERS}
    assert issubclass(CfgError, DarkpyError)
