"""Network descriptions: darknet's .cfg files and their YAML twin.

A description is a list of sections, the first of which is ``[net]``; every
other section becomes one layer.  This module mirrors three pieces of darknet:

* ``read_cfg`` (parser.c) with ``fgetl`` and ``strip`` (utils.c): a cfg file is
  read line by line; *every* space, tab and newline is removed from a line,
  wherever it is (so ``fil ters = 1 6`` reads as ``filters=16``); a line that is
  then empty or starts with ``#`` or ``;`` is skipped; a line starting with
  ``[`` opens a section; any other line is ``key=value``, split at the first
  ``=``.
* ``option_list.c``: options keep their file order, ``option_find`` returns the
  *first* option with the key and marks it used, ``option_unused`` reports the
  ones nothing asked for.
* ``string_to_layer_type`` (parser.c): the section names and their aliases.

Where darknet is silent about a malformed file (``atoi("abc")`` is 0, an option
line before any section dereferences a NULL pointer, a line without ``=``
becomes an option nothing can find) this module raises
:class:`darkpy.errors.CfgError` naming the file, line and section instead.
Two deliberate leniencies: a carriage return counts as white space (so files
with Windows line ends read as intended), and a leading UTF-8 byte-order mark
is ignored.

The YAML form holds the same sections::

    net:
      batch: 2
      learning_rate: 0.001
    layers:
    - type: convolutional
      filters: 16
      anchors: [10, 13, 16, 30]

Each layer is a mapping whose first key is ``type`` (the section name as in the
cfg, aliases allowed); the remaining keys are the options in order.  A layer
that has an option called ``type`` itself (``[cost]``'s ``type=sse``) names its
section with ``layer:`` instead, so that no YAML reader sees a duplicate key::

    - layer: cost
      type: sse
  The text of a
plain YAML number is kept as written, so ``jitter: .3`` gives darknet the
string ``.3`` exactly as the cfg did; a YAML list is joined with commas.
"""

import math
import os
import re
import secrets
import warnings
from pathlib import Path

import numpy as np
import yaml

from darkpy.errors import CfgError, DarkpyWarning

__all__ = [
    "LAYER_TYPES",
    "Option",
    "Section",
    "Description",
    "canonical_type",
    "strip",
    "read_cfg",
    "parse_cfg_text",
    "read_yaml",
    "parse_yaml_text",
    "load",
    "to_cfg_text",
    "to_yaml_text",
    "write_text_atomic",
    "convert",
]

#: Section name as written (without brackets) -> canonical type, as string_to_layer_type.
LAYER_TYPES = {
    "shortcut": "shortcut",
    "crop": "crop",
    "cost": "cost",
    "detection": "detection",
    "region": "region",
    "yolo": "yolo",
    "iseg": "iseg",
    "local": "local",
    "conv": "convolutional",
    "convolutional": "convolutional",
    "deconv": "deconvolutional",
    "deconvolutional": "deconvolutional",
    "activation": "activation",
    "logistic": "logistic",
    "l2norm": "l2norm",
    "net": "net",
    "network": "net",
    "crnn": "crnn",
    "gru": "gru",
    "lstm": "lstm",
    "rnn": "rnn",
    "conn": "connected",
    "connected": "connected",
    "max": "maxpool",
    "maxpool": "maxpool",
    "reorg": "reorg",
    "avg": "avgpool",
    "avgpool": "avgpool",
    "dropout": "dropout",
    "lrn": "normalization",
    "normalization": "normalization",
    "batchnorm": "batchnorm",
    "soft": "softmax",
    "softmax": "softmax",
    "route": "route",
    "upsample": "upsample",
}

#: darkpy's own section types beyond darknet (issue "Beyond darknet": the normalisation family).
DARKPY_LAYER_TYPES = {
    "layernorm": "layernorm",
    "instancenorm": "instancenorm",
    "groupnorm": "groupnorm",
}
LAYER_TYPES.update(DARKPY_LAYER_TYPES)

# The characters darknet's strip() removes, plus '\r' (see the module docstring).
_STRIPPED = str.maketrans("", "", " \t\n\r")

# What atoi / atof accept as a whole value.  Anything else (atoi("abc") == 0,
# atoi("1.5") == 1, atof("1.2.3") == 1.2) is refused rather than truncated.
_C_INT = re.compile(r"[+-]?[0-9]+")
_C_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def strip(line):
    """darknet's ``strip`` (utils.c): remove every space, tab and newline anywhere in ``line``.

    Carriage returns are removed as well, so CRLF files read as they were meant.
    """
    return line.translate(_STRIPPED)


def canonical_type(name):
    """The canonical layer type of a section name written without brackets, or None."""
    return LAYER_TYPES.get(name)


def _c_int(text):
    """``atoi(text)`` for a text that is a whole decimal integer within C's int; else None."""
    if not _C_INT.fullmatch(text):
        return None
    value = int(text, 10)
    return value if _INT_MIN <= value <= _INT_MAX else None


def _c_float(text):
    """``(float)atof(text)`` for a text that is a whole decimal number; else None.

    atof gives the correctly rounded double; the assignment to a C float rounds
    that double to float32 (two roundings, as in C; Python's float() is the
    same correctly rounded strtod).
    """
    if not _C_FLOAT.fullmatch(text):
        return None
    with np.errstate(over="ignore"):
        return np.float32(float(text))


class Option:
    """One ``key=value`` line: darknet's ``kvp`` plus where it was written.

    ``key`` and ``value`` are strings as darknet keeps them (after ``strip``),
    ``line`` is 1-based, ``used`` says whether a ``find*`` asked for it.
    """

    __slots__ = ("key", "value", "line", "used")

    def __init__(self, key, value, line=None, used=False):
        self.key = key
        self.value = value
        self.line = line
        self.used = used

    def __repr__(self):
        return f"Option({self.key!r}, {self.value!r}, line={self.line}, used={self.used})"

    def __eq__(self, other):
        if not isinstance(other, Option):
            return NotImplemented
        return (self.key, self.value) == (other.key, other.value)

    __hash__ = None


class Section:
    """One ``[type]`` section: darknet's ``section`` with its options.

    ``type`` is the canonical name (``'convolutional'``), ``header`` the name as
    written (``'conv'``), ``line`` the header's line, ``index`` the layer index
    (-1 for ``[net]``), ``options`` a list of :class:`Option` in file order.

    The ``find*`` accessors mirror option_list.c: the first option with the key
    wins and is marked used.  A missing key gives the default; a value that
    atoi/atof would misread raises :class:`CfgError` at the option's line.
    """

    def __init__(self, type, header=None, path=None, line=None, index=-1, options=None):
        self.type = type
        self.header = type if header is None else header
        self.path = path
        self.line = line
        self.index = index
        self.options = [] if options is None else options

    def __repr__(self):
        return (f"Section({self.type!r}, header={self.header!r}, line={self.line}, "
                f"index={self.index}, {len(self.options)} options)")

    def same_as(self, other):
        """Same header and the same keys and values in the same order (lines and use ignored)."""
        return (self.header == other.header and self.type == other.type
                and [(o.key, o.value) for o in self.options] == [(o.key, o.value) for o in other.options])

    # -- option_list.c ------------------------------------------------------------------

    def option(self, key):
        """The first :class:`Option` with ``key`` (not marked used), or None."""
        for opt in self.options:
            if opt.key == key:
                return opt
        return None

    def has(self, key):
        """Whether an option ``key`` is present (does not mark it used)."""
        return self.option(key) is not None

    def find(self, key):
        """``option_find``: the first value of ``key`` (marked used), or None."""
        opt = self.option(key)
        if opt is None:
            return None
        opt.used = True
        return opt.value

    def find_str(self, key, default=None):
        """``option_find_str``: the value of ``key`` as written, or ``default``."""
        value = self.find(key)
        return default if value is None else value

    def find_int(self, key, default=None):
        """``option_find_int``: ``atoi`` of the value, refusing what atoi would misread."""
        opt = self._take(key)
        if opt is None:
            return default
        value = _c_int(opt.value)
        if value is None:
            self._bad(opt, "an integer (like 16, -1 or +2)")
        return value

    def find_float(self, key, default=None):
        """``option_find_float``: ``(float)atof`` of the value, as a numpy.float32.

        The default is converted to float32 too, as C converts the ``float``
        argument; a ``None`` default gives None for a missing key.
        """
        opt = self._take(key)
        if opt is None:
            return None if default is None else np.float32(default)
        value = _c_float(opt.value)
        if value is None:
            self._bad(opt, "a decimal number (like 0.001, .5, 1e-3 or 5)")
        return value

    def find_int_list(self, key, default=None):
        """A comma-separated list read with atoi per item (``layers=``, ``mask=``, ``steps=``)."""
        return self._find_list(key, default, _c_int, "a comma-separated list of integers (like -1,4)")

    def find_float_list(self, key, default=None):
        """A comma-separated list read with ``(float)atof`` per item (``anchors=``, ``scales=``)."""
        return self._find_list(key, default, _c_float,
                               "a comma-separated list of decimal numbers (like 10,13,16,30)")

    def unused(self):
        """``option_unused``: the options no ``find*`` asked for, in file order."""
        return [opt for opt in self.options if not opt.used]

    def warn_unused(self):
        """Warn (``DarkpyWarning``) once per unused option, like darknet's "Unused field"."""
        for opt in self.unused():
            warnings.warn(f"{self.path}:{opt.line}: [{self.type}] unused option "
                          f"'{opt.key} = {opt.value}'", DarkpyWarning, stacklevel=2)

    def refuse_unused(self, layer=None):
        """Raise ``CfgError`` at the first option nothing read (darknet only prints "Unused field").

        A misspelt or foreign option (e.g. one of AlexeyAB's darknet) would otherwise build a
        silently different network from the one its author meant.
        """
        unused = self.unused()
        if unused:
            names = ", ".join(f"'{o.key}'" for o in unused)
            raise CfgError(f"option '{unused[0].key} = {unused[0].value}' is not one [{self.type}] reads "
                           f"(unused: {names}); remove it, or allow unused options (darknet only warns: "
                           "--allow-unused)", path=self.path, line=unused[0].line, section=self.header,
                           layer=layer)

    # -- helpers -------------------------------------------------------------------------

    def _take(self, key):
        opt = self.option(key)
        if opt is not None:
            opt.used = True
        return opt

    def _find_list(self, key, default, convert, expected):
        opt = self._take(key)
        if opt is None:
            return default
        values = [convert(item) for item in opt.value.split(",")]
        if any(v is None for v in values):
            self._bad(opt, expected)
        return values

    def _bad(self, opt, expected):
        raise CfgError(f"option '{opt.key}' = '{opt.value}': expected {expected}",
                       path=self.path, line=opt.line, section=self.header,
                       layer=self.index if self.index >= 0 else None)


class Description:
    """A whole network description: ``sections`` in file order, ``net`` first.

    ``net`` is the ``[net]`` / ``[network]`` section, ``layers`` the others
    (section ``i + 1`` is layer ``i``).
    """

    def __init__(self, path, sections):
        self.path = None if path is None else str(path)
        self.sections = list(sections)
        _check_sections(self.path, self.sections)

    @property
    def net(self):
        return self.sections[0]

    @property
    def layers(self):
        return self.sections[1:]

    def __repr__(self):
        return f"Description({self.path!r}, {len(self.layers)} layers)"

    def same_as(self, other):
        """Same sections, keys and values in the same order (what darknet would build)."""
        return (len(self.sections) == len(other.sections)
                and all(a.same_as(b) for a, b in zip(self.sections, other.sections)))

    def unused(self):
        """Every unused option of every section, as (section, option) pairs."""
        return [(s, o) for s in self.sections for o in s.unused()]

    def warn_unused(self):
        """``Section.warn_unused`` for every section."""
        for section in self.sections:
            section.warn_unused()


def _check_sections(path, sections):
    """The first section must be [net]; no other may be (parse_network_cfg's rule)."""
    if not sections:
        raise CfgError("no sections: a network description starts with [net]", path=path)
    first = sections[0]
    if first.type != "net":
        raise CfgError(f"the first section must be [net] or [network], found [{first.header}]",
                       path=path, line=first.line, section=first.header)
    for s in sections[1:]:
        if s.type == "net":
            raise CfgError(f"a second [{s.header}] section (only the first section may be [net])",
                           path=path, line=s.line, section=s.header)


# ---------------------------------------------------------------------------------------
# darknet cfg


def _decode(data, path):
    """Bytes -> text (UTF-8, a leading BOM dropped); a byte that is not UTF-8 is a CfgError at its line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CfgError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", path=path, line=line) from None
    return text


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CfgError(f"cannot read the network description: {e.strerror or e}", path=path) from None


def read_cfg(path):
    """darknet's ``read_cfg``: parse a .cfg file into a :class:`Description`."""
    return parse_cfg_text(_decode(_read_bytes(path), path), path=str(path))


def parse_cfg_text(text, path="<string>"):
    """Parse cfg text as ``read_cfg`` does (see the module docstring), refusing what darknet misreads."""
    sections = []
    current = None
    layer_index = 0
    # fgetl breaks lines at '\n' only.
    for number, raw in enumerate(text.split("\n"), start=1):
        if "\0" in raw:
            raise CfgError("NUL character in the line", path=path, line=number)
        line = strip(raw)
        if line == "" or line[0] in "#;":
            continue
        if line[0] == "[":
            header = line[1:-1] if line.endswith("]") else None
            kind = canonical_type(header) if header is not None else None
            if kind is None:
                raise CfgError(f"unknown section {line!r} (expected one of "
                               f"{', '.join('[' + k + ']' for k in LAYER_TYPES)})",
                               path=path, line=number)
            current = Section(kind, header, path, number, -1 if kind == "net" else layer_index)
            layer_index += kind != "net"
            sections.append(current)
            continue
        # read_option: split at the first '='.  darknet keeps a line without '=' as
        # an option with a NULL value that no lookup can return, and drops (with
        # "could parse") a line whose '=' is its last character.
        key, eq, value = line.partition("=")
        if not eq:
            raise CfgError(f"cannot parse {line!r}: expected key=value", path=path, line=number)
        if value == "":
            raise CfgError(f"option '{key}' has no value after '='", path=path, line=number)
        if key == "":
            raise CfgError(f"option with no name before '=' ({line!r})", path=path, line=number)
        if current is None:
            # darknet would write through a NULL section pointer here.
            raise CfgError(f"option {line!r} before the first [section]", path=path, line=number)
        current.options.append(Option(key, value, number))
    return Description(path, sections)


#: Characters YAML (and Python's str.splitlines) treat as line breaks: text holding one would be
#: folded when read back, silently becoming another option, so it is refused.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _check_writable(section, key, value):
    """A key/value that a cfg line (and a YAML scalar) can hold and read back unchanged."""
    opt = section.option(key) if isinstance(key, str) else None
    where = dict(path=section.path, section=section.header, line=opt.line if opt else section.line)
    if not isinstance(key, str) or not isinstance(value, str):
        raise CfgError(f"option {key!r} = {value!r}: keys and values must be strings", **where)
    if _LINE_BREAKS & set(key + value):
        raise CfgError(f"option {key!r} = {value!r} holds a line-break character; it cannot be written "
                       "and read back unchanged", **where)
    if key == "" or "=" in key or key[0] in "[#;" or key != strip(key) or "\0" in key:
        raise CfgError(f"option name {key!r} cannot be written to a cfg line", **where)
    if value == "" or value != strip(value) or "\0" in value:
        raise CfgError(f"option '{key}' value {value!r} cannot be written to a cfg line", **where)


def to_cfg_text(desc):
    """Write a description as darknet cfg text: ``[header]`` then ``key=value`` lines.

    Section names are written as they were (``[conv]`` stays ``[conv]``), so
    cfg -> yaml -> cfg is the identity on every section, key and value.
    """
    blocks = []
    for section in desc.sections:
        header = section.header if canonical_type(section.header) == section.type else section.type
        lines = [f"[{header}]"]
        for opt in section.options:
            _check_writable(section, opt.key, opt.value)
            lines.append(f"{opt.key}={opt.value}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------
# YAML

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# Implicit tags whose plain text is simply a string to darknet.
_TEXT_TAGS = (_STR, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
# Plain YAML integers / floats whose YAML value is what atoi / atof read from the
# same text (no octal leading zeros, no underscores, no sexagesimal, no .inf).
_YAML_SAME_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
# SafeLoader's scalar constructors, for YAML numbers whose text atoi/atof would misread.
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _node_line(node):
    return node.start_mark.line + 1 if node.start_mark is not None else None


def _yaml_error(e, path, text):
    """A yaml.YAMLError as a CfgError at the line where PyYAML stopped."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    if line is None and getattr(e, "position", None) is not None:  # ReaderError
        line = text.count("\n", 0, e.position) + 1
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    message = f"YAML: {context}, {problem}" if context else f"YAML: {problem}"
    return CfgError(message, path=path, line=line)


def _scalar_text(node, path, what):
    """The string darknet would see for a YAML scalar (see the module docstring)."""
    tag, text = node.tag, node.value
    where = dict(path=path, line=_node_line(node))
    if tag in _TEXT_TAGS:
        return text
    constructor = _CONSTRUCTOR
    try:
        if tag == _INT:
            if _YAML_SAME_INT.fullmatch(text):
                return text
            return str(constructor.construct_yaml_int(node))
        if tag == _FLOAT:
            if _C_FLOAT.fullmatch(text):
                return text
            value = constructor.construct_yaml_float(node)
            return repr(value) if math.isfinite(value) else str(value)
        if tag == _BOOL:
            return "1" if constructor.construct_yaml_bool(node) else "0"
    except (ValueError, TypeError, KeyError, IndexError, yaml.YAMLError) as e:
        raise CfgError(f"{what}: cannot read {text!r} as {tag.rsplit(':', 1)[-1]} ({e})", **where) from None
    if tag == _NULL:
        raise CfgError(f"{what} has no value", **where)
    raise CfgError(f"{what}: unsupported YAML tag {tag!r}", **where)


def _yaml_value(node, path, what):
    """A YAML option value -> the cfg string: scalars as written, flat lists joined by ','."""
    if isinstance(node, yaml.ScalarNode):
        value = strip(_scalar_text(node, path, what))
    elif isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        items = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise CfgError(f"{what}: list items must be numbers or strings, not nested lists or mappings",
                               path=path, line=_node_line(item))
            items.append(strip(_scalar_text(item, path, what)))
        if not items:
            raise CfgError(f"{what} is an empty list", path=path, line=_node_line(node))
        if any(item == "" or "," in item for item in items):
            raise CfgError(f"{what}: list items must be non-empty and contain no ','",
                           path=path, line=_node_line(node))
        value = ",".join(items)
    else:
        raise CfgError(f"{what} must be a number, a string or a list of them", path=path, line=_node_line(node))
    if value == "":
        raise CfgError(f"{what} is empty", path=path, line=_node_line(node))
    if "\0" in value:
        raise CfgError(f"{what} contains a NUL character", path=path, line=_node_line(node))
    return value


def _yaml_key(node, path):
    if not isinstance(node, yaml.ScalarNode):
        raise CfgError("option names must be plain strings", path=path, line=_node_line(node))
    key = strip(node.value)
    if key == "" or "=" in key or key[0] in "[#;" or "\0" in key:
        raise CfgError(f"option name {node.value!r} cannot be a darknet option "
                       "(empty, or has '=', or starts with '[', '#' or ';')", path=path, line=_node_line(node))
    return key


def _yaml_options(pairs, path, header):
    options = []
    for key_node, value_node in pairs:
        key = _yaml_key(key_node, path)
        options.append(Option(key, _yaml_value(value_node, path, f"[{header}] option '{key}'"),
                              _node_line(key_node)))
    return options


def read_yaml(path):
    """Parse a YAML network description file into a :class:`Description`."""
    return parse_yaml_text(_decode(_read_bytes(path), path), path=str(path))


def parse_yaml_text(text, path="<string>"):
    """Parse YAML text (``net:`` mapping and ``layers:`` list) into a :class:`Description`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(e, path, text) from None
    except RecursionError:
        raise CfgError("YAML nested too deeply", path=path) from None
    if root is None:
        raise CfgError("empty YAML document: expected a mapping with 'net:' and 'layers:'", path=path)
    if not isinstance(root, yaml.MappingNode):
        raise CfgError("expected a mapping with 'net:' and 'layers:' at the top", path=path, line=_node_line(root))

    net = layers = None
    for key_node, value_node in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key in ("net", "network"):
            if net is not None:
                raise CfgError(f"a second '{key}:' (only one [net] section)", path=path, line=_node_line(key_node))
            net = (key, key_node, value_node)
        elif key == "layers":
            if layers is not None:
                raise CfgError("a second 'layers:'", path=path, line=_node_line(key_node))
            layers = value_node
        else:
            raise CfgError(f"unknown top-level key {key if key is not None else '(not a string)'!r}: "
                           "expected 'net:' and 'layers:'", path=path, line=_node_line(key_node))
    if net is None:
        raise CfgError("no 'net:' mapping: a network description starts with [net]", path=path)

    header, key_node, value_node = net
    if isinstance(value_node, yaml.ScalarNode) and value_node.tag == _NULL:
        pairs = []
    elif isinstance(value_node, yaml.MappingNode):
        pairs = value_node.value
    else:
        raise CfgError(f"'{header}:' must be a mapping of options", path=path, line=_node_line(value_node))
    sections = [Section("net", header, path, _node_line(key_node), -1, _yaml_options(pairs, path, header))]

    if layers is None or (isinstance(layers, yaml.ScalarNode) and layers.tag == _NULL):
        items = []
    elif isinstance(layers, yaml.SequenceNode):
        items = layers.value
    else:
        raise CfgError("'layers:' must be a list of mappings", path=path, line=_node_line(layers))
    for index, item in enumerate(items):
        where = dict(path=path, line=_node_line(item), layer=index)
        if not isinstance(item, yaml.MappingNode) or not item.value:
            raise CfgError("each layer must be a mapping starting with 'type:'", **where)
        (type_key, type_node), *pairs = item.value
        if not (isinstance(type_key, yaml.ScalarNode) and type_key.value in ("type", "layer")):
            raise CfgError("a layer's first key must be 'type:' (or 'layer:')", **where)
        if not isinstance(type_node, yaml.ScalarNode):
            raise CfgError(f"'{type_key.value}:' must name a layer type", **where)
        header = strip(type_node.value)
        kind = canonical_type(header)
        if kind is None:
            raise CfgError(f"unknown layer type {type_node.value!r}", **where)
        if kind == "net":
            raise CfgError(f"a second [{header}] section (only 'net:' may be [net])", **where)
        sections.append(Section(kind, header, path, _node_line(item), index, _yaml_options(pairs, path, header)))
    return Description(path, sections)


_Dumper = yaml.SafeDumper
# The implicit-type rules SafeDumper and SafeLoader share (YAML 1.1 as PyYAML has it).
_RESOLVER = yaml.resolver.Resolver()


def _value_node(value):
    """A cfg value -> a YAML node: numbers typed, comma lists as flow lists, else strings.

    A node is typed int/float only when its plain text, read by any YAML
    reader, has the value atoi/atof give to the same text; otherwise it is a
    string, which the emitter quotes when the plain text would mean something
    else (``'010'``, ``'yes'``).
    """
    def scalar(text):
        tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
        if tag == _INT and _YAML_SAME_INT.fullmatch(text):
            return yaml.ScalarNode(_INT, text)
        if tag == _FLOAT and _C_FLOAT.fullmatch(text):
            return yaml.ScalarNode(_FLOAT, text)
        return yaml.ScalarNode(_STR, text)

    if "," in value:
        items = [scalar(item) for item in value.split(",")]
        if all(item.tag != _STR for item in items):
            return yaml.SequenceNode(_SEQ, items, flow_style=True)
    return scalar(value)


def _serialize(node):
    return yaml.serialize(node, Dumper=_Dumper, width=1 << 30, allow_unicode=True)


def _mapping(pairs):
    return yaml.MappingNode(_MAP, [(yaml.ScalarNode(_STR, k), v) for k, v in pairs], flow_style=False)


def to_yaml_text(desc):
    """Write a description as YAML (see the module docstring); comments name each layer index."""
    for section in desc.sections:
        for opt in section.options:
            _check_writable(section, opt.key, opt.value)
    net = desc.net
    net_key = net.header if net.header in ("net", "network") else "net"
    parts = [_serialize(_mapping([(net_key, _mapping([(o.key, _value_node(o.value)) for o in net.options]))]))]
    parts.append("layers:\n" if desc.layers else "layers: []\n")
    for index, section in enumerate(desc.layers):
        header = section.header if canonical_type(section.header) == section.type else section.type
        name = "layer" if section.has("type") else "type"
        pairs = [(name, yaml.ScalarNode(_STR, header))]
        pairs += [(o.key, _value_node(o.value)) for o in section.options]
        item = yaml.SequenceNode(_SEQ, [_mapping(pairs)], flow_style=False)
        parts.append(f"\n# layer {index}\n" + _serialize(item))
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# files


def _kind_of(path):
    suffix = Path(path).suffix.lower()
    if suffix == ".cfg":
        return "cfg"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return None


def load(path):
    """Read a description: ``.cfg`` as darknet cfg, ``.yaml``/``.yml`` as YAML.

    Any other name is sniffed: the first line that is neither blank nor a
    ``#`` comment starting with ``[`` (or a ``;`` comment) means cfg.
    """
    data = _read_bytes(path)
    text = _decode(data, path)
    kind = _kind_of(path)
    if kind is None:
        kind = "yaml"
        for raw in text.split("\n"):
            line = strip(raw)
            if line and line[0] != "#":
                kind = "cfg" if line[0] in "[;" else "yaml"
                break
    if kind == "cfg":
        return parse_cfg_text(text, path=str(path))
    return parse_yaml_text(text, path=str(path))


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def write_text_atomic(path, text, force=False, inputs=()):
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file.  Refuses (CfgError) to overwrite any
    of ``inputs`` unless ``force``.  An existing file keeps its permission bits.
    """
    path = os.fspath(path)
    if not force:
        for src in inputs:
            if _same_file(path, os.fspath(src)):
                raise CfgError("refusing to overwrite an input file (use force to allow it)", path=path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        mode = os.stat(path).st_mode & 0o7777 if os.path.isfile(path) else None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise CfgError(f"cannot write: {e.strerror or e}", path=path) from None


def convert(src, dst, force=False):
    """Load ``src`` (cfg or YAML) and write it to ``dst`` in the format of ``dst``'s suffix.

    Returns the loaded :class:`Description`.
    """
    kind = _kind_of(dst)
    if kind is None:
        raise CfgError("unknown output format: name it .cfg, .yaml or .yml", path=dst)
    desc = load(src)
    text = to_cfg_text(desc) if kind == "cfg" else to_yaml_text(desc)
    write_text_atomic(dst, text, force=force, inputs=(src,))
    return desc
