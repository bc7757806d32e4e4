"""Re-running dump directories and comparing tensors bit for bit.

``check_case(dir)`` re-runs the computation a dump describes (a standalone
batchnorm or convolutional layer, or a whole network from its cfg and
weights) through darkpy and compares every tensor the dump holds.
``compare_cases(a, b)`` compares two dumps.  Comparison is bitwise: a tensor
passes only when every float32 bit pattern is identical; for the rest the
table gives the maximum ULP distance (with -0 and +0 zero ULP apart), the
maximum absolute difference and the first differing index.
"""

import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from darkpy.dump import read_case
from darkpy.errors import DarkpyError, DumpError
from darkpy.layer import UpdateArgs


# ----------------------------------------------------------------------------- comparison

def _ordered(bits):
    """float32 bit patterns mapped to integers whose difference counts ULPs (-0 and +0 both 0)."""
    i = bits.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def bitwise_equal(a, b):
    """True when two float32 arrays have the same shape and identical bit patterns."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def ulp_distance(a, b):
    """Element-wise ULP distance of two float32 arrays (int64; NaN against anything else: -1)."""
    a = np.ascontiguousarray(a, np.float32).ravel()
    b = np.ascontiguousarray(b, np.float32).ravel()
    d = np.abs(_ordered(a) - _ordered(b))
    nan = np.isnan(a) | np.isnan(b)
    same_bits = a.view(np.uint32) == b.view(np.uint32)
    return np.where(nan, np.where(same_bits, 0, -1), d)


@dataclass
class Row:
    """One line of a check table."""

    name: str
    shape: tuple
    identical: bool
    differing: int = 0
    size: int = 0
    max_ulp: float = 0  # inf when a NaN meets a number or a different NaN
    max_abs: float = 0.0
    first_index: tuple = None
    note: str = ""

    def cells(self):
        if self.note and not self.size:
            return [self.name, "x".join(map(str, self.shape)) or "-", "MISSING", "", "", "", self.note]
        ulp = "nan" if self.max_ulp == float("inf") else str(int(self.max_ulp))
        first = "" if self.first_index is None else str(list(self.first_index))
        return [self.name, "x".join(map(str, self.shape)) or "scalar",
                "identical" if self.identical else f"DIFFERS {self.differing}/{self.size}",
                ulp, f"{self.max_abs:.6g}", first, self.note]


def compare_tensor(name, expected, actual):
    """Compare one tensor bitwise; a Row with ULP/abs statistics of the differing elements."""
    expected = np.asarray(expected, np.float32)
    actual = np.asarray(actual, np.float32)
    shape = expected.shape
    if expected.size != actual.size:
        return Row(name, shape, False, expected.size, expected.size, float("inf"), float("inf"),
                   None, f"size {actual.size} != {expected.size}")
    actual = actual.reshape(shape)
    e, a = expected.ravel(), actual.ravel()
    diff = e.view(np.uint32) != a.view(np.uint32)
    n = int(diff.sum())
    if n == 0:
        return Row(name, shape, True, 0, e.size)
    ulps = ulp_distance(e, a)
    max_ulp = float("inf") if (ulps < 0).any() else float(ulps.max())
    with np.errstate(invalid="ignore", over="ignore"):
        absd = np.abs(e.astype(np.float64) - a.astype(np.float64))
    finite = absd[np.isfinite(absd)]
    max_abs = float(finite.max()) if finite.size else float("inf")
    if finite.size != absd.size:
        max_abs = float("inf") if max_abs == 0 or not np.isnan(absd).all() else max_abs
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), shape)) if shape else ()
    return Row(name, shape, False, n, e.size, max_ulp, max_abs, first)


def format_table(rows, title=None):
    """The rows as an aligned text table."""
    head = ["tensor", "shape", "result", "max ULP", "max |diff|", "first diff", ""]
    cells = [head] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [title] if title else []
    for k, c in enumerate(cells):
        lines.append("  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


@dataclass
class CheckResult:
    """What ``check_case`` / ``compare_cases`` found."""

    path: str
    kind: str
    steps: list
    rows: list

    @property
    def ok(self):
        return bool(self.rows) and all(r.identical for r in self.rows)

    def summary(self):
        same = sum(r.identical for r in self.rows)
        return f"{same}/{len(self.rows)} tensors bitwise identical"


# ----------------------------------------------------------------------------- re-running a case

def run_case(case):
    """Re-run a case through darkpy: {tensor name: computed array} for every non-given tensor."""
    runner = {"batchnorm": _run_batchnorm, "convolutional": _run_convolutional,
              "network": _run_network}[case.kind]
    return runner(case)


def _given(case, name, size=None):
    """A given tensor, flat; ``size`` (when known) is what the layer buffer it fills holds."""
    if name not in case:
        raise DumpError(f"the case lacks the given tensor {name!r}", path=case.path / "case.json")
    data = case.flat(name)
    if size is not None and data.size != size:
        raise DumpError(f"given tensor {name!r} has {data.size} values; the layer built from params "
                        f"needs {size}", path=case.path / "case.json")
    return data


def _param(case, key):
    try:
        return case.params[key]
    except KeyError:
        raise DumpError(f"params.{key} is missing", path=case.path / "case.json") from None


def _int(case, key, default=None, minimum=0):
    """An integer parameter (JSON int, not bool), at least ``minimum``."""
    value = case.params.get(key, default) if default is not None else _param(case, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DumpError(f"params.{key} is {value!r}: expected an integer >= {minimum}",
                        path=case.path / "case.json")
    return value


def _str(case, key, optional=False):
    value = case.params.get(key) if optional else _param(case, key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise DumpError(f"params.{key} is {value!r}: expected a file name", path=case.path / "case.json")
    return value


def _set(case, layer, field, name):
    buf = getattr(layer, field)
    buf[:] = _given(case, name, buf.size)


def _run_batchnorm(case):
    from darkpy.layers import batchnorm
    batch, c, h, w = (_int(case, k, minimum=1) for k in ("batch", "c", "h", "w"))
    train = _int(case, "train", default=1)
    l = batchnorm.make_batchnorm_layer(batch, w, h, c)
    for field, name in (("scales", "scales"), ("biases", "biases"), ("rolling_mean", "rolling_mean_before"),
                        ("rolling_variance", "rolling_variance_before")):
        _set(case, l, field, name)
    if train:
        _set(case, l, "bias_updates", "bias_updates_before")
        _set(case, l, "scale_updates", "scale_updates_before")
    net = SimpleNamespace(input=_given(case, "input", l.inputs * batch),
                          delta=np.zeros(l.inputs * batch, np.float32),
                          train=train, workspace=None, truth=None, index=0)
    out = {}
    l.forward(l, net)
    _snap(out, l, ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"))
    if train and "delta_in" in case:
        _set(case, l, "delta", "delta_in")
        l.backward(l, net)
        _snap(out, l, ("bias_updates", "scale_updates", "mean_delta", "variance_delta", "delta"))
        out["net_delta"] = net.delta.copy()
    return out


def _run_convolutional(case):
    from darkpy.kernels.activations import get_activation
    from darkpy.layers import convolutional
    p = case.params
    get = lambda k: _int(case, k, minimum=1)  # noqa: E731
    bn = _int(case, "batch_normalize")
    activation = _str(case, "activation")
    try:
        l = convolutional.make_convolutional_layer(get("batch"), get("h"), get("w"), get("c"), get("filters"),
                                                   get("groups"), get("size"), get("stride"),
                                                   _int(case, "padding"), get_activation(activation),
                                                   bn, 0, 0, 0)
    except DarkpyError as exc:
        raise DumpError(f"params describe no valid convolutional layer: {exc.message}",
                        path=case.path / "case.json") from None
    l.learning_rate_scale = np.float32(1)
    for field in ("weights", "biases", "weight_updates", "bias_updates") + (
            ("scales", "scale_updates", "rolling_mean", "rolling_variance") if bn else ()):
        _set(case, l, field, field + "_before")
    net = SimpleNamespace(input=_given(case, "input", l.inputs * l.batch),
                          delta=_given(case, "net_delta_before", l.inputs * l.batch),
                          train=_int(case, "train", default=1), truth=None, index=0,
                          workspace=np.zeros(max(int(l.workspace_size), 4) // 4, np.float32))
    out = {}
    l.forward(l, net)
    _snap(out, l, ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"))
    if "delta_in" in case:
        _set(case, l, "delta", "delta_in")
        l.backward(l, net)
        _snap(out, l, ("delta", "weight_updates", "bias_updates", "scale_updates", "mean_delta",
                       "variance_delta"))
        out["net_delta"] = net.delta.copy()
        u = p.get("update")
        if u:
            try:
                a = UpdateArgs(batch=int(u["batch"]), learning_rate=np.float32(u["learning_rate"]),
                               momentum=np.float32(u["momentum"]), decay=np.float32(u["decay"]))
            except (TypeError, KeyError, ValueError) as exc:
                raise DumpError(f"params.update must hold numbers batch, learning_rate, momentum, decay "
                                f"({exc})", path=case.path / "case.json") from None
            l.update(l, a)
            _snap(out, l, ("weights", "biases", "scales"))
            for field in ("weight_updates", "bias_updates", "scale_updates"):
                if getattr(l, field) is not None:
                    out[field + "_after"] = getattr(l, field).copy()
    return out


def _snap(out, l, fields):
    for f in fields:
        v = getattr(l, f, None)
        if isinstance(v, np.ndarray):
            out[f] = v.copy()


_LAYER_TENSOR = re.compile(r"^(infer_)?layer(\d+)_(\w+?)(_after)?$")


def network_steps(case):
    """The steps a network case ran, in order, as ("forward", train) / ("backward",) / ("update",)."""
    steps = []
    listed = case.params.get("steps", ["forward train=0", "forward train=1", "backward", "update_network"])
    if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
        raise DumpError(f"params.steps is {listed!r}: expected a list of step names", path=case.path / "case.json")
    for s in listed:
        if s.startswith("forward"):
            steps.append(("forward", 0 if "train=0" in s else 1))
        elif s.startswith("backward"):
            steps.append(("backward",))
        elif s.startswith("update"):
            steps.append(("update",))
        else:
            raise DumpError(f"unknown step {s!r} in params.steps", path=case.path / "case.json")
    return steps


def _run_network(case):
    from darkpy.network import (backward_network, build_network, forward_network, update_network)
    from darkpy.description import load
    from darkpy.weights import load_weights
    cfg = case.path / _str(case, "cfg")
    batch = _int(case, "batch", minimum=1) if "batch" in case.params else None
    net = build_network(load(cfg), batch=batch)
    weights = _str(case, "weights", optional=True)
    if weights:
        load_weights(net, case.path / weights)
    net.input[:] = _given(case, "input", net.input.size)
    if "truth" in case:
        net.truth[:] = _given(case, "truth", net.truth.size)
    wanted = {}
    for name in case.names():
        if case.entry(name).stage == "given":
            continue
        if name == "cost":
            wanted[name] = ("forward1", None, None)
            continue
        m = _LAYER_TENSOR.match(name)
        if not m:
            raise DumpError(f"tensor {name!r}: expected layerNN_<field>, infer_layerNN_output or cost",
                            path=case.path / "case.json")
        infer, index, field, after = m.groups()
        index = int(index)
        if index >= net.n:
            raise DumpError(f"tensor {name!r}: the network has only {net.n} layers",
                            path=case.path / "case.json")
        stage = case.entry(name).stage
        step = "forward0" if infer else ("update" if after or stage == "update" else
                                         "forward1" if stage == "forward" else "backward")
        wanted[name] = (step, index, field)
    out = {}

    def snap(step):
        for name, (s, index, field) in wanted.items():
            if s != step:
                continue
            if name == "cost":
                out[name] = net.cost.copy()
                continue
            v = getattr(net.layers[index], field, None)
            if isinstance(v, np.ndarray):
                out[name] = v.copy()

    for step in network_steps(case):
        if step[0] == "forward":
            if step[1]:
                net.seen += net.batch
                if "srand" in case.params:  # the stream dropout/crop draw from while training
                    from darkpy import crand
                    crand.srand(_int(case, "srand"))
            net.train = step[1]
            forward_network(net)
            snap(f"forward{step[1]}")
        elif step[0] == "backward":
            backward_network(net)
            snap("backward")
        else:
            update_network(net)
            snap("update")
    return out


def check_case(path):
    """Re-run the dump at ``path`` and compare every computed tensor it holds, bitwise."""
    case = read_case(path)
    computed = run_case(case)
    rows = []
    for name in case.names():
        if case.entry(name).stage == "given":
            continue
        expected = case[name]
        if name not in computed:
            rows.append(Row(name, expected.shape, False, note="darkpy computed no such tensor"))
            continue
        rows.append(compare_tensor(name, expected, computed[name]))
    steps = [" ".join(map(str, s)) for s in network_steps(case)] if case.kind == "network" else \
        [case.kind + (" forward+backward+update" if "delta_in" in case else " forward")]
    return CheckResult(str(case.path), case.kind, steps, rows)


def compare_cases(path_a, path_b):
    """Compare two dump directories tensor by tensor (``a`` is the reference)."""
    a, b = read_case(path_a), read_case(path_b)
    rows = []
    for name in a.names():
        if name not in b:
            rows.append(Row(name, a.entry(name).shape, False, note=f"absent from {b.path}"))
            continue
        rows.append(compare_tensor(name, a[name], b[name]))
    for name in b.names():
        if name not in a:
            rows.append(Row(name, b.entry(name).shape, False, note=f"absent from {a.path}"))
    return CheckResult(f"{a.path} vs {b.path}", a.kind, [], rows)
