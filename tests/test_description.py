"""darkpy.description: darknet cfg and YAML network descriptions.

The reader is checked against darknet's rules (parser.c read_cfg, utils.c strip,
option_list.c) and, where C parses numbers, against the C library itself
(atoi / atof through ctypes): an accepted value must read exactly as darknet
reads it, bit for bit for floats.
"""

import ctypes
import ctypes.util
import functools
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, GOLDEN, SHARED, shared_path
from darkpy import description as dsc
from darkpy.description import (
    LAYER_TYPES, Description, Option, Section, convert, load, parse_cfg_text, parse_yaml_text,
    read_cfg, read_yaml, to_cfg_text, to_yaml_text, write_text_atomic,
)
from darkpy.errors import CfgError, DarkpyError, DarkpyWarning

CFG = DATA / "cfg"
SHARED_CFGS = sorted((SHARED / "cfg").glob("*.cfg")) if (SHARED / "cfg").is_dir() else []
GOLDEN_CFGS = sorted(GOLDEN.glob("net-*/network.cfg"))

# How parser.c reads each key it knows (option_find_int / option_find_float /
# option_find_str, and the comma lists it splits itself with atoi / atof).
INT_KEYS = set("""absolute adam background batch batch_normalize bias_match binary burn_in center
    channels classes classfix coords crop_height crop_width dontload dontloadscales dontsave extra
    filters flatten flip flipped forced groups height hidden_filters ids inputs log max max_batches
    max_crop min_crop noadjust noloss notruth num numload onlyforward output output_filters pad
    padding random reorg rescore reverse shortcut side size softmax sqrt step stopbackward stride
    subdivisions tanh time_steps truth width xnor from""".split())
FLOAT_KEYS = set("""alpha angle aspect beta class_scale clip coord_scale decay dot eps exposure
    gamma hue ignore_thresh jitter kappa learning_rate mask_scale max_ratio min_ratio momentum
    noobj noobject_scale object_scale power probability ratio saturation scale shift smooth
    spatial temperature thresh truth_thresh B1 B2""".split())
INT_LIST_KEYS = {"layers", "mask", "steps"}
FLOAT_LIST_KEYS = {"anchors", "scales"}
STR_KEYS = {"activation", "policy", "type", "map", "tree"}


@functools.lru_cache(maxsize=None)
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library found for ctypes")
    libc = ctypes.CDLL(name)
    libc.atof.restype = ctypes.c_double
    libc.atof.argtypes = [ctypes.c_char_p]
    libc.atoi.restype = ctypes.c_int
    libc.atoi.argtypes = [ctypes.c_char_p]
    return libc


def c_atof_float(text):
    """What darknet's ``float x = atof(text)`` holds."""
    with np.errstate(over="ignore"):
        return np.float32(_libc().atof(text.encode()))


def c_atoi(text):
    return _libc().atoi(text.encode())


def section_of(*pairs, type="convolutional"):
    return Section(type, type, "t.cfg", 1, 0, [Option(k, v, i + 2) for i, (k, v) in enumerate(pairs)])


def cfg(text):
    return parse_cfg_text(text, path="t.cfg")


def error_of(fn, *args):
    with pytest.raises(CfgError) as info:
        fn(*args)
    return info.value


def assert_same(a, b):
    assert [s.header for s in a.sections] == [s.header for s in b.sections]
    assert [s.type for s in a.sections] == [s.type for s in b.sections]
    for sa, sb in zip(a.sections, b.sections):
        assert [(o.key, o.value) for o in sa.options] == [(o.key, o.value) for o in sb.options]
    assert a.same_as(b)


# ---------------------------------------------------------------------------------------
# every real cfg


@pytest.mark.parametrize("path", SHARED_CFGS, ids=lambda p: p.name)
def test_shared_cfg_parses_and_every_value_reads_as_darknet_reads_it(path):
    shared_path("cfg")
    desc = read_cfg(path)
    assert desc.net.type == "net" and desc.net.index == -1
    assert [s.index for s in desc.layers] == list(range(len(desc.layers)))
    assert len(desc.sections) == sum(1 for line in path.read_text().splitlines()
                                     if line.strip().startswith("["))
    for section in desc.sections:
        for opt in section.options:
            key, value = opt.key, opt.value
            if key in INT_KEYS:
                assert section.find_int(key, 0) == c_atoi(value)
            elif key in FLOAT_KEYS:
                assert section.find_float(key, 0).tobytes() == c_atof_float(value).tobytes()
            elif key in INT_LIST_KEYS:
                assert section.find_int_list(key) == [c_atoi(v) for v in value.split(",")]
            elif key in FLOAT_LIST_KEYS:
                got = section.find_float_list(key)
                assert [g.tobytes() for g in got] == [c_atof_float(v).tobytes() for v in value.split(",")]
            elif key in STR_KEYS:
                assert section.find_str(key, "") == value
            else:
                pytest.fail(f"{path.name}:{opt.line}: key {key!r} is not one parser.c reads")
        assert section.unused() == [o for o in section.options if not o.used]


@pytest.mark.parametrize("path", SHARED_CFGS + GOLDEN_CFGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cfg_yaml_cfg_is_the_identity(path, tmp_path):
    if path in SHARED_CFGS:
        shared_path("cfg")
    desc = read_cfg(path)
    yaml_text = to_yaml_text(desc)
    back = parse_yaml_text(yaml_text, "x.yaml")
    assert_same(desc, back)
    cfg_text = to_cfg_text(back)
    again = parse_cfg_text(cfg_text, "x.cfg")
    assert_same(desc, again)
    # written text is a fixed point, and values darknet sees are string-identical after strip
    assert to_cfg_text(again) == cfg_text and to_yaml_text(again) == yaml_text
    # ... and through files, with convert
    convert(path, tmp_path / "n.yaml")
    convert(tmp_path / "n.yaml", tmp_path / "n.cfg")
    assert (tmp_path / "n.cfg").read_text() == to_cfg_text(desc)


@pytest.mark.parametrize("path", SHARED_CFGS + GOLDEN_CFGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_is_typed_naturally(path):
    if path in SHARED_CFGS:
        shared_path("cfg")
    desc = read_cfg(path)
    data = yaml.load(to_yaml_text(desc), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    sections = [data.get("net", data.get("network"))] + data["layers"]
    assert len(sections) == len(desc.sections)
    for plain, section in zip(sections, desc.sections):
        for opt in section.options:
            value = plain[opt.key]
            if opt.key in INT_KEYS:
                assert isinstance(value, int) and value == c_atoi(opt.value)
            elif opt.key in INT_LIST_KEYS:
                expected = [c_atoi(v) for v in opt.value.split(",")]
                assert value == (expected if "," in opt.value else expected[0])
            elif opt.key in FLOAT_KEYS | FLOAT_LIST_KEYS:
                items = value if isinstance(value, list) else [value]
                # YAML 1.1 has no exponent-without-dot floats ('5e-4' stays a string); all else is a number
                assert all(isinstance(v, (int, float)) or "e" in v.lower() for v in items)
    for plain, section in zip(data["layers"], desc.layers):
        assert plain["layer" if section.has("type") else "type"] == section.header


# ---------------------------------------------------------------------------------------
# read_cfg, strip, comments


def test_strip_removes_every_space_tab_and_newline_anywhere():
    assert dsc.strip(" fil ters =\t1 6\n") == "filters=16"
    assert dsc.strip("a\r\n") == "a"


def test_messy_cfg_reads_as_darknet_reads_it():
    desc = read_cfg(CFG / "messy.cfg")
    assert [(s.type, s.header, s.line, s.index) for s in desc.sections] == [
        ("net", "net", 4, -1), ("convolutional", "conv", 15, 0), ("maxpool", "max", 24, 1),
        ("route", "route", 28, 2), ("softmax", "soft", 31, 3)]
    net = desc.net
    assert [(o.key, o.value, o.line) for o in net.options] == [
        ("batch", "2", 5), ("subdivisions", "1", 6), ("width", "8", 7), ("height", "8", 8),
        ("channels", "3", 9), ("learning_rate", ".001", 10), ("momentum", "0.9", 11), ("decay", "5e-4", 13)]
    conv = desc.layers[0]
    assert conv.find_int("filters", 1) == 16          # 'fil ters = 1 6', the first of two
    assert conv.find_str("activation", "logistic") == "leaky"
    assert desc.layers[2].find_int_list("layers") == [-1, -3]
    assert desc.layers[3].options == []
    assert net.find_float("learning_rate", 0).tobytes() == c_atof_float(".001").tobytes()
    assert net.find_float("decay", 0) == np.float32(5e-4)


def test_comments_blank_lines_and_crlf():
    text = "[net]\r\n#c\r\n;c\r\n\r\n  \t \r\nbatch=4\r\n\n[conv]\r\nfilters=8\r\n"
    desc = cfg(text)
    assert desc.net.find_int("batch", 1) == 4 and desc.net.options[0].line == 6
    assert desc.layers[0].find_int("filters", 1) == 8
    # a '#' after the value is part of the value (darknet's atoi would stop at it; we refuse)
    sec = cfg("[net]\nbatch=16#sixteen\n").net
    assert sec.find_str("batch") == "16#sixteen"
    assert "16#sixteen" in str(error_of(sec.find_int, "batch", 1))


def test_value_may_hold_equals_signs_split_at_the_first():
    opt = cfg("[net]\npolicy=a=b=c\n").net.options[0]
    assert (opt.key, opt.value) == ("policy", "a=b=c")


@pytest.mark.parametrize("alias", sorted(LAYER_TYPES))
def test_every_section_alias(alias, tmp_path):
    text = f"[{alias}]\nbatch=1\n" if alias in ("net", "network") else f"[net]\n[{alias}]\nx=1\n"
    desc = cfg(text)
    section = desc.sections[-1]
    assert section.header == alias and section.type == LAYER_TYPES[alias]
    assert_same(desc, parse_yaml_text(to_yaml_text(desc)))
    assert to_cfg_text(desc).startswith("[network]" if alias == "network" else "[net]")
    assert f"[{alias}]" in to_cfg_text(parse_yaml_text(to_yaml_text(desc)))


def test_aliases_are_exactly_darknets():
    """darknet's section names (string_to_layer_type) and darkpy's own three norm layers."""
    canonical = {"net", "convolutional", "deconvolutional", "connected", "maxpool", "avgpool", "softmax",
                 "normalization", "batchnorm", "route", "shortcut", "upsample", "yolo", "region",
                 "detection", "cost", "dropout", "crop", "reorg", "activation", "local", "logistic",
                 "l2norm", "rnn", "gru", "lstm", "crnn", "iseg"}
    darkpy_only = {"layernorm", "instancenorm", "groupnorm"}
    assert set(LAYER_TYPES.values()) == canonical | darkpy_only
    aliases = {k: v for k, v in LAYER_TYPES.items() if k != v}
    assert aliases == {"conv": "convolutional", "deconv": "deconvolutional", "conn": "connected",
                       "max": "maxpool", "avg": "avgpool", "soft": "softmax", "lrn": "normalization",
                       "network": "net"}


def test_small_yaml_is_small_cfg():
    assert_same(read_yaml(CFG / "small.yaml"), read_cfg(CFG / "small.cfg"))
    y = read_yaml(CFG / "small.yaml")
    assert [s.line for s in y.sections] == [2, 11, 17, 23]
    assert [o.line for o in y.layers[1].options] == [18, 19, 20, 21, 22]
    cost = y.layers[2]
    assert cost.type == "cost" and cost.find_str("type", "x") == "sse"


# ---------------------------------------------------------------------------------------
# option_list.c


def test_find_returns_the_first_match_and_marks_only_it_used():
    sec = section_of(("size", "3"), ("stride", "1"), ("size", "5"))
    assert not sec.has("nope") and sec.has("size")
    assert not any(o.used for o in sec.options)            # has() does not mark
    assert sec.find("size") == "3"
    assert [o.used for o in sec.options] == [True, False, False]
    assert sec.find_int("size", 9) == 3
    assert sec.unused() == [Option("stride", "1"), Option("size", "5")]
    assert sec.find("nope") is None and sec.find_int("nope", 7) == 7 and sec.find_str("nope", "d") == "d"
    assert sec.find_float("nope", .1) == np.float32(.1) and isinstance(sec.find_float("nope", 1), np.float32)
    assert sec.find_float("nope") is None and sec.find_int_list("nope") is None
    assert sec.find_float_list("nope", [1]) == [1]


def test_unused_options_warn_with_file_and_line():
    desc = cfg("[net]\nbatch=1\n\n[conv]\nfilters=2\nfilters=3\nbogus=x\n")
    desc.net.find_int("batch", 1)
    conv = desc.layers[0]
    conv.find_int("filters", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        desc.warn_unused()
    messages = [str(w.message) for w in caught]
    assert all(issubclass(w.category, DarkpyWarning) for w in caught)
    assert messages == ["t.cfg:6: [convolutional] unused option 'filters = 3'",
                        "t.cfg:7: [convolutional] unused option 'bogus = x'"]
    assert [(s.type, o.key) for s, o in desc.unused()] == [("convolutional", "filters"), ("convolutional", "bogus")]


@pytest.mark.parametrize("text", ["1", "-1", "+2", "0", "007", "2147483647", "-2147483648", "500200"])
def test_find_int_accepts_what_atoi_reads_whole(text):
    assert section_of(("k", text)).find_int("k", 0) == c_atoi(text) == int(text)


@pytest.mark.parametrize("text", ["abc", "", "1.2.3", "1.5", "1e3", "16x", "0x10", "- 1", "1_0",
                                  "2147483648", "-2147483649", "١", "+", "--1"])
def test_find_int_refuses_what_atoi_would_misread(text):
    sec = section_of(("filters", text))
    err = error_of(sec.find_int, "filters", 1)
    assert err.path == "t.cfg" and err.line == 2 and err.section == "convolutional"
    assert f"'filters' = '{text}'" in str(err) and "integer" in str(err) and str(err).startswith("t.cfg:2 [convolutional] layer 0: ")


@pytest.mark.parametrize("text", [".3", "1e-3", "5", "-0.5", "+.5", "1.", "0.1", "3.4028236e38", "1e-46",
                                  "1e400", "0.00001", "1.00000005960464477539062500000001", "2E+3"])
def test_find_float_is_float_of_atof_bit_for_bit(text):
    got = section_of(("k", text)).find_float("k", 0)
    assert isinstance(got, np.float32)
    assert got.tobytes() == c_atof_float(text).tobytes()


@pytest.mark.parametrize("text", ["abc", "", "1.2.3", "1e", ".", "e3", "nan", "inf", "0x1p3", "1,5", "1e+"])
def test_find_float_refuses_what_atof_would_misread(text):
    sec = section_of(("jitter", text))
    err = error_of(sec.find_float, "jitter", .2)
    assert err.line == 2 and f"'jitter' = '{text}'" in str(err) and "decimal number" in str(err)


def test_lists():
    sec = section_of(("layers", "-1,4"), ("mask", "3"), ("anchors", "10,13,.5,1e1"), ("bad", "1,,2"),
                     ("trail", "1,2,"), ("fbad", "1,x"))
    assert sec.find_int_list("layers") == [-1, 4] and sec.find_int_list("mask") == [3]
    assert [a.tobytes() for a in sec.find_float_list("anchors")] == \
        [c_atof_float(v).tobytes() for v in ("10", "13", ".5", "1e1")]
    for key, fn in (("bad", sec.find_int_list), ("trail", sec.find_int_list), ("fbad", sec.find_float_list)):
        err = error_of(fn, key)
        assert err.line == [o.key for o in sec.options].index(key) + 2 and f"'{key}'" in str(err)


def test_errors_name_the_layer_index():
    desc = cfg("[net]\n[conv]\n[max]\nsize=x\n")
    err = error_of(desc.layers[1].find_int, "size", 2)
    assert str(err).startswith("t.cfg:4 [max] layer 1: ")


# ---------------------------------------------------------------------------------------
# error paths, each with file:line


@pytest.mark.parametrize("text, line, words", [
    ("batch=1\n[net]\n", 1, "before the first"),
    ("[net]\nbatch\n", 2, "expected key=value"),
    ("[net]\nbatch = \n", 2, "no value"),
    ("[net]\n=3\n", 2, "no name"),
    ("[net]\n=\n", 2, "no value"),
    ("[net]\n[convolution]\n", 2, "unknown section"),
    ("[net]\n[ conv\n", 2, "unknown section"),
    ("[net]\n[conv]]\n", 2, "unknown section"),
    ("[net]\n[]\n", 2, "unknown section"),
    ("[net]#x\n", 1, "unknown section"),
    ("[conv]\n[net]\n", 1, "first section must be [net]"),
    ("[net]\n[conv]\n[network]\n", 3, "second [network]"),
    ("[net]\nba\0tch=1\n", 2, "NUL"),
])
def test_cfg_errors(text, line, words):
    err = error_of(parse_cfg_text, text, "bad.cfg")
    assert err.path == "bad.cfg" and err.line == line
    assert str(err).startswith(f"bad.cfg:{line}") and words in str(err)


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing\n;here\n"])
def test_cfg_without_sections(text):
    err = error_of(parse_cfg_text, text, "e.cfg")
    assert str(err).startswith("e.cfg: ") and "[net]" in str(err)


def test_file_errors(tmp_path):
    missing = tmp_path / "missing.cfg"
    for fn in (load, read_cfg, read_yaml):
        err = error_of(fn, missing)
        assert str(missing) in str(err) and "cannot read" in str(err)
    assert str(tmp_path) in str(error_of(load, tmp_path))
    bad = tmp_path / "latin1.cfg"
    bad.write_bytes(b"[net]\nbatch=1\nname=caf\xe9\n")
    err = error_of(read_cfg, bad)
    assert err.line == 3 and "UTF-8" in str(err)
    bom = tmp_path / "bom.cfg"
    bom.write_bytes(b"\xef\xbb\xbf[net]\nbatch=3\n")
    assert read_cfg(bom).net.find_int("batch", 1) == 3


@pytest.mark.parametrize("text, line, words", [
    ("net:\n  batch: [1\nlayers: []\n", 3, "YAML"),
    ("net: {}\nlayers:\n  - type: convolutionl\n", 3, "unknown layer type"),
    ("net: {}\nlayers:\n  - 3\n", 3, "mapping"),
    ("net: {}\nlayers:\n  - {}\n", 3, "mapping"),
    ("net: {}\nlayers:\n  - filters: 3\n    type: conv\n", 3, "first key must be 'type:'"),
    ("net: {}\nlayers:\n  - type: [conv]\n", 3, "'type:'"),
    ("net: {}\nlayers:\n  - type: net\n", 3, "second [net]"),
    ("net:\n  batch: 1\nlayers:\n  - type: route\n    layers: [[1, 2]]\n", 5, "nested"),
    ("net:\n  batch: 1\n  steps: []\n", 3, "empty list"),
    ("net:\n  batch:\n", 2, "no value"),
    ("net:\n  batch: ~\n", 2, "no value"),
    ("net:\n  batch: ''\n", 2, "empty"),
    ("net:\n  batch: {a: 1}\n", 2, "number, a string or a list"),
    ("net:\n  batch: !!int abc\n", 2, "cannot read 'abc' as int"),
    ("net:\n  batch: !!bool maybe\n", 2, "as bool"),
    ("net:\n  batch: !mine 3\n", 2, "unsupported YAML tag"),
    ("net:\n  batch: [1, '']\n", 2, "non-empty"),
    ("net:\n  batch: [1, 'a,b']\n", 2, "contain no ','"),
    ("net:\n  a=b: 1\n", 2, "cannot be a darknet option"),
    ("net:\n  '#a': 1\n", 2, "cannot be a darknet option"),
    ("net:\n  '[a': 1\n", 2, "cannot be a darknet option"),
    ("net:\n  ? [a]\n  : 1\n", 2, "plain strings"),
    ("net: 3\n", 1, "mapping of options"),
    ("net: {}\nlayers: 3\n", 2, "list of mappings"),
    ("net: {}\nnetwork: {}\n", 2, "second 'network:'"),
    ("net: {}\nlayers: []\nlayers: []\n", 3, "second 'layers:'"),
    ("net: {}\nlayer: []\n", 2, "unknown top-level key 'layer'"),
    ("- 1\n", 1, "expected a mapping"),
    ("net: {}\n---\nnet: {}\n", 2, "YAML"),
    ("net: {}\n\tlayers: []\n", 2, "YAML"),
    ("net: {}\nlayers: []\n\x07\n", 3, "YAML"),
    ("net:\n  a: \"\\0\"\n", 2, "NUL"),
])
def test_yaml_errors(text, line, words):
    err = error_of(parse_yaml_text, text, "bad.yaml")
    assert err.path == "bad.yaml" and err.line == line, str(err)
    assert str(err).startswith(f"bad.yaml:{line}") and words in str(err), str(err)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "layers: []\n"])
def test_yaml_without_net(text):
    err = error_of(parse_yaml_text, text, "e.yaml")
    assert str(err).startswith("e.yaml") and "net" in str(err)


# ---------------------------------------------------------------------------------------
# YAML values


@pytest.mark.parametrize("written, darknet_sees", [
    ("16", "16"), ("+2", "+2"), (".3", ".3"), ("-.5", "-.5"), ("1e-3", "1e-3"), ("1.0e-3", "1.0e-3"),
    ("0x10", "16"), ("010", "8"), ("1_000", "1000"), ("1:30", "90"), ("'010'", "010"), ("true", "1"),
    ("no", "0"), ("1_0.5", "10.5"), ("!!str 5", "5"), ("!!int '12'", "12"), ("!!float '2'", "2"), ("!!float '2_0'", "20.0"),
    ("leaky", "leaky"), ("'1 0'", "10"), ("[-1, 4]", "-1,4"), ("[.5, 1.0e-3, 7]", ".5,1.0e-3,7"),
    ("10,13, 16,30", "10,13,16,30"), ("\"10,13,\\t16\"", "10,13,16"), ("2001-12-14", "2001-12-14"),
])
def test_yaml_scalars_give_darknet_the_value_yaml_means(written, darknet_sees):
    desc = parse_yaml_text(f"net:\n  k: {written}\n")
    assert desc.net.options[0].value == darknet_sees
    assert parse_yaml_text(to_yaml_text(desc)).net.options[0].value == darknet_sees


@pytest.mark.parametrize("value", ["010", "yes", "~", "null", "0x10", "1:30", "1_0", "#x", "[3", "-", "a:b",
                                   "1,a", "1,,2", ",", "1e-3", "+2", "-0", "'q", "\"q", "*a", "&a", "!t",
                                   "%x", "@x", "`x", "é", "2001-12-14", "<<", "=", ".inf", ".nan", "1,.inf"])
def test_awkward_cfg_values_survive_yaml(value):
    desc = cfg(f"[net]\nk={value}\n")
    back = parse_yaml_text(to_yaml_text(desc))
    assert back.net.options[0].value == value
    assert to_cfg_text(back) == to_cfg_text(desc)


def test_cfg_values_darknet_reads_differ_from_yaml_are_quoted():
    text = to_yaml_text(cfg("[net]\na=010\nb=yes\nc=1_0\nd=16\n"))
    plain = yaml.safe_load(text)["net"]
    assert plain == {"a": "010", "b": "yes", "c": "1_0", "d": 16}


def test_writers_refuse_what_a_cfg_line_cannot_hold():
    for key, value in [("a b", "1"), ("a=b", "1"), ("#a", "1"), ("", "1"), ("a", ""), ("a", "1 2"),
                       ("a", "1\n2"), ("a", 1)]:
        desc = Description("p", [Section("net", "net", "p", 1, -1, [Option(key, value, 2)])])
        for writer in (to_cfg_text, to_yaml_text):
            error_of(writer, desc)


def test_description_requires_net_first():
    with pytest.raises(CfgError, match="first section"):
        Description("p", [Section("convolutional")])
    with pytest.raises(CfgError, match="no sections"):
        Description("p", [])


# ---------------------------------------------------------------------------------------
# files: load, write_text_atomic, convert


def test_load_by_suffix_and_by_sniffing(tmp_path):
    reference = read_cfg(CFG / "small.cfg")
    cfg_text = (CFG / "small.cfg").read_text()
    yaml_text = (CFG / "small.yaml").read_text()
    for name, text in [("a.cfg", cfg_text), ("a.yaml", yaml_text), ("a.yml", yaml_text), ("a.CFG", cfg_text),
                       ("noext", cfg_text), ("a.txt", "# comment\n\n" + cfg_text), ("b.txt", ";c\n" + cfg_text),
                       ("c.net", yaml_text), ("d", "\n\n" + yaml_text)]:
        (tmp_path / name).write_text(text)
        assert_same(load(tmp_path / name), reference)
    (tmp_path / "e.yaml").write_text(cfg_text)           # a cfg named .yaml is read as YAML and refused
    assert isinstance(error_of(load, tmp_path / "e.yaml"), CfgError)


def test_write_text_atomic(tmp_path):
    target = tmp_path / "out.cfg"
    write_text_atomic(target, "[net]\n")
    assert target.read_text() == "[net]\n"
    os.chmod(target, 0o640)
    write_text_atomic(str(target), "[net]\nbatch=1\n")
    assert target.read_text() == "[net]\nbatch=1\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cfg"]        # no temp file left
    err = error_of(write_text_atomic, target, "x", False, [tmp_path / "." / "out.cfg"])
    assert "input" in str(err) and str(target) in str(err)
    assert target.read_text() == "[net]\nbatch=1\n"
    write_text_atomic(target, "[net]\n", force=True, inputs=[target])
    assert target.read_text() == "[net]\n"
    err = error_of(write_text_atomic, tmp_path / "no" / "such" / "dir.cfg", "x")
    assert "dir.cfg" in str(err) and "cannot write" in str(err)
    (tmp_path / "adir").mkdir()
    error_of(write_text_atomic, tmp_path / "adir", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "out.cfg"]


def test_convert(tmp_path):
    src = tmp_path / "small.cfg"
    src.write_text((CFG / "small.cfg").read_text())
    desc = convert(src, tmp_path / "small.yaml")
    assert_same(read_yaml(tmp_path / "small.yaml"), desc)
    assert_same(convert(tmp_path / "small.yaml", tmp_path / "again.cfg"), desc)
    assert (tmp_path / "again.cfg").read_text() == to_cfg_text(desc)
    assert "input" in str(error_of(convert, src, src))
    convert(src, src, force=True)
    assert_same(read_cfg(src), desc)
    assert ".cfg, .yaml or .yml" in str(error_of(convert, src, tmp_path / "x.json"))
    assert "cannot read" in str(error_of(convert, tmp_path / "none.cfg", tmp_path / "y.cfg"))
    assert not (tmp_path / "y.cfg").exists()


# ---------------------------------------------------------------------------------------
# fuzz: malformed text only ever raises darkpy errors; what parses round-trips

# 60 examples per run keep the suite fast; python -m darkpy.fuzz runs these properties for longer
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG_ALPHABET = st.sampled_from(list("[]=#;, \t\r\n.-+e0123456789abcnotv") + ["net", "conv", "yolo", "\0",
                                                                            "é", "[net]\n", "=1\n"])
YAML_ALPHABET = st.sampled_from(list("[]{}:-,#'\"!&*|>?% \t\n.0123456789abe~") + [
    "net:", "layers:", "type:", "\n  ", "\n  - ", "type: conv", "!!int", "!!float", "null", "\0"])


def _roundtrips(desc):
    assert_same(parse_yaml_text(to_yaml_text(desc)), desc)
    assert_same(parse_cfg_text(to_cfg_text(desc)), desc)


def _mutate(text, edits):
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut:]
    return text


@FUZZ
@given(st.lists(CFG_ALPHABET, max_size=60).map("".join))
def test_fuzz_cfg_text(text):
    try:
        desc = parse_cfg_text(text, "f.cfg")
    except DarkpyError:
        return
    _roundtrips(desc)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.lists(CFG_ALPHABET, max_size=3).map("".join)),
                min_size=1, max_size=6))
def test_fuzz_mutated_cfg(edits):
    text = _mutate((CFG / "messy.cfg").read_text(), edits)
    try:
        desc = parse_cfg_text(text, "f.cfg")
    except DarkpyError:
        return
    _roundtrips(desc)
    for section in desc.sections:     # accessors: a value or a CfgError, never garbage
        for opt in section.options:
            for find in (section.find_int, section.find_float, section.find_int_list, section.find_float_list):
                try:
                    find(opt.key)
                except CfgError as e:
                    assert e.line == section.option(opt.key).line


@FUZZ
@given(st.lists(YAML_ALPHABET, max_size=40).map("".join))
def test_fuzz_yaml_text(text):
    try:
        desc = parse_yaml_text("net:\n  batch: 1\n" + text, "f.yaml")
    except DarkpyError:
        return
    _roundtrips(desc)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.lists(YAML_ALPHABET, max_size=3).map("".join)),
                min_size=1, max_size=6))
def test_fuzz_mutated_yaml(edits):
    text = _mutate((CFG / "small.yaml").read_text(), edits)
    try:
        desc = parse_yaml_text(text, "f.yaml")
    except DarkpyError:
        return
    _roundtrips(desc)


@FUZZ
@given(st.one_of(st.from_regex(r"\A[+-]?[0-9]{0,12}\.?[0-9]{0,12}(?:[eE][+-]?[0-9]{1,3})?\Z"),
                 st.text(alphabet="+-.eE0123456789x ", max_size=12)))
def test_fuzz_numbers_read_as_c_reads_them(text):
    sec = section_of(("i", text), ("f", text))
    try:
        value = sec.find_int("i", 0)
    except CfgError:
        value = None
    if value is not None:
        assert value == c_atoi(text) == int(text)
    try:
        real = sec.find_float("f", 0)
    except CfgError:
        real = None
    if real is not None:
        assert real.tobytes() == c_atof_float(text).tobytes()
    assert (value is not None) == bool(re.fullmatch(r"[+-]?[0-9]+", text) and -2**31 <= int(text) < 2**31)
