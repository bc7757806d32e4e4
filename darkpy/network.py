"""The network: darknet's ``struct network``, its builder and its three loops.

Mirrors darknet's ``network.c`` (``forward_network``, ``backward_network``,
``update_network``, ``get_current_rate``, ``calc_network_cost``,
``train_network_datum``) and ``parse_network_cfg`` / ``parse_net_options`` of
``parser.c``.  Layers are built one after the other from a
``darkpy.description.Description``: each section's module (``darkpy.layers``)
parses its options with the shape of the previous layer's output, exactly as
darknet threads ``size_params`` through its parser.
"""

import copy
import math
import time
from dataclasses import dataclass

import numpy as np

from darkpy import layers as layer_types
from darkpy.errors import CfgError, DarkpyError, MemoryLimitError
from darkpy.layer import BudgetExceeded, UpdateArgs, charge, memory_budget

f32 = np.float32

#: darknet's ``learning_rate_policy`` names as ``get_policy`` reads them.
POLICIES = ("constant", "step", "exp", "poly", "steps", "sigmoid", "random")

#: The default limit on the float32 buffers a network may allocate (bytes); see ``build_network``.
DEFAULT_MEMORY_LIMIT = 16 * 2**30


@dataclass
class SizeParams:
    """darknet's ``size_params``: the input shape each layer parser receives."""

    batch: int
    inputs: int
    h: int
    w: int
    c: int
    index: int
    time_steps: int
    net: "Network"


class Network:
    """darknet's ``struct network`` (the CPU fields), with darknet's names.

    ``seen`` and ``t`` are plain ints (darknet keeps pointers to them so that
    copies of the struct share them; darkpy's loops update the one object).
    ``input``, ``truth``, ``delta``, ``workspace`` are flat float32 arrays or None;
    ``cost`` is a 1-element float32 array.
    """

    def __init__(self, n=0):
        self.n = n
        self.layers = []
        self.batch = 1
        self.seen = 0
        self.t = 0
        self.epoch = 0.0
        self.subdivisions = 1
        self.output = None
        self.policy = "constant"
        self.learning_rate = f32(0)
        self.momentum = f32(0)
        self.decay = f32(0)
        self.gamma = f32(0)
        self.scale = f32(0)
        self.power = f32(0)
        self.time_steps = 1
        self.step = 0
        self.max_batches = 0
        self.scales = None
        self.steps = None
        self.num_steps = 0
        self.burn_in = 0
        self.adam = 0
        self.B1 = f32(0)
        self.B2 = f32(0)
        self.eps = f32(0)
        self.inputs = 0
        self.outputs = 0
        self.truths = 0
        self.notruth = 0
        self.h = self.w = self.c = 0
        self.max_crop = self.min_crop = 0
        self.max_ratio = self.min_ratio = f32(0)
        self.center = 0
        self.angle = self.aspect = self.exposure = self.saturation = self.hue = f32(0)
        self.random = 0
        self.clip = f32(0)
        self.input = None
        self.truth = None
        self.delta = None
        self.workspace = None
        self.train = 0
        self.index = 0
        self.cost = np.zeros(1, np.float32)
        self.path = None  # the description this network was built from

    def __repr__(self):
        return f"Network({self.n} layers, batch={self.batch}, input {self.c}x{self.h}x{self.w})"


# ----------------------------------------------------------------------------- building

def parse_net_options(section, net):
    """darknet's ``parse_net_options``: the ``[net]`` section into ``net``."""
    net.batch = section.find_int("batch", 1)
    net.learning_rate = f32(section.find_float("learning_rate", .001))
    net.momentum = f32(section.find_float("momentum", .9))
    net.decay = f32(section.find_float("decay", .0001))
    subdivs = section.find_int("subdivisions", 1)
    net.time_steps = section.find_int("time_steps", 1)
    net.notruth = section.find_int("notruth", 0)
    if subdivs < 1:
        _bad(section, "subdivisions", subdivs, "a positive integer")
    net.batch //= subdivs
    net.batch *= net.time_steps
    net.subdivisions = subdivs
    net.random = section.find_int("random", 0)

    net.adam = section.find_int("adam", 0)
    if net.adam:
        net.B1 = f32(section.find_float("B1", .9))
        net.B2 = f32(section.find_float("B2", .999))
        net.eps = f32(section.find_float("eps", .0000001))

    net.h = section.find_int("height", 0)
    net.w = section.find_int("width", 0)
    net.c = section.find_int("channels", 0)
    net.inputs = section.find_int("inputs", net.h * net.w * net.c)
    net.max_crop = section.find_int("max_crop", net.w * 2)
    net.min_crop = section.find_int("min_crop", net.w)
    net.max_ratio = f32(section.find_float("max_ratio", float(f32(net.max_crop) / f32(net.w)) if net.w else 0.0))
    net.min_ratio = f32(section.find_float("min_ratio", float(f32(net.min_crop) / f32(net.w)) if net.w else 0.0))
    net.center = section.find_int("center", 0)
    net.clip = f32(section.find_float("clip", 0))
    net.angle = f32(section.find_float("angle", 0))
    net.aspect = f32(section.find_float("aspect", 1))
    net.saturation = f32(section.find_float("saturation", 1))
    net.exposure = f32(section.find_float("exposure", 1))
    net.hue = f32(section.find_float("hue", 0))

    if net.batch < 1:
        _bad(section, "batch", net.batch, "batch/subdivisions*time_steps >= 1")
    if not net.inputs and not (net.h and net.w and net.c):
        raise CfgError("no input size: set height, width and channels (or inputs)",
                       path=section.path, line=section.line, section=section.header)
    for key in ("height", "width", "channels", "inputs"):
        if section.has(key) and getattr(net, {"height": "h", "width": "w", "channels": "c"}.get(key, key)) < 0:
            _bad(section, key, section.find(key), "a non-negative integer")

    policy = section.find_str("policy", "constant")
    if policy not in POLICIES:  # darknet prints "Couldn't find policy" and goes on with constant
        _bad(section, "policy", policy, "one of " + ", ".join(POLICIES))
    net.policy = policy
    net.burn_in = section.find_int("burn_in", 0)
    net.power = f32(section.find_float("power", 4))
    if policy == "step":
        net.step = section.find_int("step", 1)
        net.scale = f32(section.find_float("scale", 1))
        if net.step < 1:
            _bad(section, "step", net.step, "a positive integer (get_current_rate divides by it)")
    elif policy == "steps":
        steps = section.find_int_list("steps", None)
        scales = section.find_float_list("scales", None)
        if steps is None or scales is None:
            raise CfgError("policy=steps needs both steps= and scales=",
                           path=section.path, line=section.line, section=section.header)
        if len(scales) < len(steps):
            _bad(section, "scales", section.find("scales"), f"{len(steps)} values, one per step")
        net.steps = np.array(steps, np.int64)
        net.scales = np.array(scales[:len(steps)], np.float32)
        net.num_steps = len(steps)
    elif policy in ("exp", "sigmoid"):
        net.gamma = f32(section.find_float("gamma", 1))
        if policy == "sigmoid":
            net.step = section.find_int("step", 1)
    net.max_batches = section.find_int("max_batches", 0)


def _bad(section, key, value, expected):
    opt = next((o for o in section.options if o.key == key), None)
    raise CfgError(f"{key}={value}: expected {expected}", path=section.path,
                   line=opt.line if opt else section.line, section=section.header)


def build_network(description, batch=None, memory_limit=DEFAULT_MEMORY_LIMIT, allow_unused=None):
    """darknet's ``parse_network_cfg``: a ``Network`` from a ``Description``.

    ``batch`` overrides the ``[net]`` batch (darknet's ``set_batch_network``).
    Raises ``CfgError``/``ShapeError`` naming the file, line and layer for
    anything darknet could not build, and for an option no layer reads (darknet's
    "Unused field" shrug) unless ``allow_unused`` (then a ``DarkpyWarning``; the
    default comes from ``darkpy.network.ALLOW_UNUSED``, which ``--allow-unused`` sets), and ``MemoryLimitError`` when the float32
    buffers would exceed ``memory_limit`` bytes: every buffer a layer allocates
    (``darkpy.layer.zeros``), the input, the truth and the shared workspace are
    counted before they are allocated, and the first one that would cross the
    limit is refused with its size and the total it would make.
    """
    net = Network(len(description.layers))
    net.path = description.path
    if allow_unused is None:
        allow_unused = ALLOW_UNUSED
    parse_net_options(description.net, net)
    _unused(description.net, allow_unused, None)
    if batch is not None:
        if batch < 1:
            raise CfgError(f"batch {batch}: expected a positive integer", path=description.path)
        net.batch = batch

    params = SizeParams(batch=net.batch, inputs=net.inputs, h=net.h, w=net.w, c=net.c,
                        index=0, time_steps=net.time_steps, net=net)
    with memory_budget(memory_limit):
        where = dict(path=description.net.path, line=description.net.line, section=description.net.header)
        _charge(4 * net.inputs * net.batch, "the input buffer", where)
        workspace_size = 0
        for count, section in enumerate(description.layers):
            params.index = count
            _check_input(section, params)
            where = dict(path=section.path, line=section.line, section=section.header, layer=count)
            try:
                l = layer_types.parse_layer(section, params)
            except DarkpyError as e:
                raise e.locate(**where)
            except BudgetExceeded as e:  # refused before numpy allocated the buffer
                raise MemoryLimitError(
                    f"this layer needs a buffer of {e.needed} bytes, which would take the network to "
                    f"{e.total} bytes, over the limit of {e.limit}; lower batch/width/height or raise the "
                    "limit", **where) from None
            except (MemoryError, ValueError) as e:   # numpy refused a buffer: more than the machine has
                if isinstance(e, ValueError) and not any(
                        m in str(e) for m in ("array is too big", "Maximum allowed dimension",
                                              "negative dimensions")):
                    raise
                raise MemoryLimitError(f"this layer's buffers do not fit in memory ({e}); the network's "
                                       f"limit is {memory_limit} bytes", **where) from None
            if section.type == "dropout" and count > 0:
                # darknet: a dropout layer works in place on the previous layer's buffers
                l.output = net.layers[count - 1].output
                l.delta = net.layers[count - 1].delta
            l.clip = net.clip
            l.truth = section.find_int("truth", 0)
            l.onlyforward = section.find_int("onlyforward", 0)
            l.stopbackward = section.find_int("stopbackward", 0)
            l.dontsave = section.find_int("dontsave", 0)
            l.dontload = section.find_int("dontload", 0)
            l.numload = section.find_int("numload", 0)
            l.dontloadscales = section.find_int("dontloadscales", 0)
            l.learning_rate_scale = f32(section.find_float("learning_rate", 1))
            l.smooth = f32(section.find_float("smooth", 0))
            _unused(section, allow_unused, count)
            net.layers.append(l)
            if int(l.workspace_size) > workspace_size:  # the shared workspace grows to the largest need
                _charge(_workspace_bytes(l.workspace_size) - _workspace_bytes(workspace_size),
                        f"the shared workspace ({int(l.workspace_size)} bytes for this layer)", where)
                workspace_size = int(l.workspace_size)
            params.h, params.w, params.c, params.inputs = l.out_h, l.out_w, l.out_c, l.outputs

        if not net.layers:
            raise CfgError("the network has no layers after [net]", path=description.path)
        out = get_network_output_layer(net)
        net.outputs = out.outputs
        net.truths = out.outputs
        if net.layers[-1].truths:
            net.truths = net.layers[-1].truths
        _charge(4 * net.truths * net.batch, "the truth buffer", where)
    net.output = out.output
    net.input = np.zeros(net.inputs * net.batch, np.float32)
    net.truth = np.zeros(net.truths * net.batch, np.float32)
    if workspace_size:
        net.workspace = np.zeros(_workspace_bytes(workspace_size) // 4, np.float32)
    return net


#: Whether build_network accepts options no layer reads (warning) by default; ``--allow-unused`` sets it.
ALLOW_UNUSED = False


def _unused(section, allow, layer):
    if allow:
        section.warn_unused()
    else:
        section.refuse_unused(layer)


def _workspace_bytes(workspace_size):
    """Bytes of darknet's ``calloc(1, workspace_size)`` workspace, in whole floats."""
    return 4 * ((int(workspace_size) - 1) // 4 + 1) if workspace_size else 0


def _charge(nbytes, what, where):
    try:
        charge(nbytes)
    except BudgetExceeded as e:
        raise MemoryLimitError(f"{what} needs {e.needed} bytes, which would take the network to {e.total} "
                               f"bytes, over the limit of {e.limit}; lower batch/width/height or raise the "
                               "limit", **where) from None


def _check_input(section, params):
    """Refuse an input shape no layer can take (darknet would allocate garbage or crash)."""
    if params.inputs <= 0 or params.batch <= 0:
        raise CfgError(f"input to this layer has {params.inputs} values "
                       f"({params.c}x{params.h}x{params.w}); expected a positive size",
                       path=section.path, line=section.line, section=section.header, layer=params.index)


def load_network(cfg, weights=None, batch=None, clear=False):
    """Read a cfg/YAML description, build it and optionally load a ``.weights`` file.

    darknet's ``load_network``; ``clear`` resets ``seen`` as darknet's ``clear`` flag does.
    """
    from darkpy.description import load
    net = build_network(load(cfg), batch=batch)
    if weights is not None:
        from darkpy.weights import load_weights
        load_weights(net, weights)
    if clear:
        net.seen = 0
    return net


def get_network_output_layer(net):
    """darknet's ``get_network_output_layer``: the last layer that is not a [cost]."""
    for l in reversed(net.layers):
        if l.type != "cost":
            return l
    return net.layers[-1]


# ----------------------------------------------------------------------------- the loops

def forward_network(net, timings=None):
    """darknet's ``forward_network``: every layer's forward, then the network cost.

    darknet runs the loop on a copy of the struct (``network net = *netp``), so
    ``net.input``/``net.truth`` of the caller are unchanged afterwards; so here.
    ``timings``, when a list, receives each layer's wall time in seconds.
    """
    n = copy.copy(net)
    for i, l in enumerate(net.layers):
        n.index = i
        if l.delta is not None:
            l.delta.fill(0)
        t0 = time.perf_counter()
        try:
            l.forward(l, n)
        except DarkpyError as e:
            raise e.locate(path=net.path, section=l.type, layer=i)
        if timings is not None:
            timings.append(time.perf_counter() - t0)
        n.input = l.output
        if l.truth:
            n.truth = l.output
    calc_network_cost(net)


def backward_network(net, timings=None):
    """darknet's ``backward_network``: layers in reverse, each given its predecessor's output and delta.

    ``timings``, when a list, receives ``(index, seconds)`` per layer run.
    """
    orig = net
    for i in range(net.n - 1, -1, -1):
        l = net.layers[i]
        if l.stopbackward:
            break
        n = copy.copy(orig)
        if i > 0:
            prev = net.layers[i - 1]
            n.input = prev.output
            n.delta = prev.delta
        n.index = i
        t0 = time.perf_counter()
        try:
            l.backward(l, n)
        except DarkpyError as e:
            raise e.locate(path=net.path, section=l.type, layer=i)
        if timings is not None:
            timings.append((i, time.perf_counter() - t0))


def update_network(net):
    """darknet's ``update_network``: one SGD (or Adam) step for every layer with an update."""
    a = UpdateArgs(batch=net.batch * net.subdivisions, learning_rate=get_current_rate(net),
                   momentum=net.momentum, decay=net.decay, adam=net.adam,
                   B1=net.B1, B2=net.B2, eps=net.eps)
    net.t += 1
    a.t = net.t
    for l in net.layers:
        if l.update is not None:
            l.update(l, a)


def calc_network_cost(net):
    """darknet's ``calc_network_cost``: the float mean of the layers' ``cost[0]`` (0/0 gives NaN as in C)."""
    total = f32(0)
    count = 0
    for l in net.layers:
        if l.cost is not None:
            total = f32(total + l.cost[0])
            count += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        net.cost[0] = f32(total / f32(count))


def train_network_datum(net):
    """darknet's ``train_network_datum``: seen += batch, forward and backward in training mode, maybe update."""
    net.seen += net.batch
    net.train = 1
    forward_network(net)
    backward_network(net)
    error = net.cost[0]
    if (net.seen // net.batch) % net.subdivisions == 0:
        update_network(net)
    return error


def get_current_batch(net):
    """darknet's ``get_current_batch``: ``seen / (batch*subdivisions)`` in size_t arithmetic."""
    return net.seen // (net.batch * net.subdivisions)


def get_current_rate(net):
    """darknet's ``get_current_rate``, with C's float/double promotions.

    ``pow``/``exp`` run in double on float arguments; the result is rounded to
    float where darknet returns it.  ``batch_num`` is a size_t, so the sigmoid
    policy's ``batch_num - step`` wraps modulo 2**64 before it is converted to
    float, as in C.
    """
    batch_num = get_current_batch(net)
    lr = float(net.learning_rate)
    if batch_num < net.burn_in:
        base = float(f32(batch_num) / f32(net.burn_in))
        return f32(lr * math.pow(base, float(net.power)))
    policy = net.policy
    if policy == "constant":
        return f32(net.learning_rate)
    if policy == "step":
        with np.errstate(over="ignore"):
            return f32(lr * _c_pow(float(net.scale), batch_num // net.step))
    if policy == "steps":
        rate = f32(net.learning_rate)
        for i in range(net.num_steps):
            if net.steps[i] > batch_num:
                return rate
            rate = f32(rate * net.scales[i])
        return rate
    if policy == "exp":
        with np.errstate(over="ignore"):
            return f32(lr * _c_pow(float(net.gamma), batch_num))
    if policy == "poly":
        with np.errstate(divide="ignore", invalid="ignore"):
            base = f32(1) - f32(f32(batch_num) / f32(net.max_batches))
        with np.errstate(over="ignore"):
            return f32(lr * _c_pow(float(base), float(net.power)))
    if policy == "random":
        from darkpy.crand import rand_uniform
        return f32(lr * math.pow(float(rand_uniform(0, 1)), float(net.power)))
    if policy == "sigmoid":
        diff = f32((batch_num - net.step) % 2**64)  # size_t arithmetic, then converted to float
        with np.errstate(over="ignore"):
            arg = float(f32(net.gamma * diff))
        try:
            e = math.exp(arg)
        except OverflowError:
            e = math.inf
        return f32(lr * (1. / (1. + e)))
    raise CfgError(f"unknown learning-rate policy {policy!r}")


def _c_pow(x, y):
    """C's ``pow`` for the cases Python's raises on (negative base, fractional exponent: NaN)."""
    try:
        return math.pow(x, y)
    except ValueError:
        return math.nan
    except OverflowError:  # C gives -inf for a negative base with an odd integer exponent
        odd = float(y).is_integer() and int(y) % 2 == 1
        return -math.inf if x < 0 and odd else math.inf


def randomize_parameters(net, seed=0):
    """Deterministic random parameters for running a cfg without ``.weights`` (not darknet's init).

    Weights uniform in +-sqrt(2/fan_in) (darknet's scale), biases small, batchnorm
    scales 1, rolling mean 0 and rolling variance 1, from numpy's PCG64 seeded
    with ``seed``: the same seed gives the same network on every machine.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    for l in net.layers:
        if l.weights is not None and l.weights.size:
            fan_in = max(1, l.weights.size // max(1, l.n or l.outputs or 1))
            scale = math.sqrt(2.0 / fan_in)
            l.weights[:] = (rng.uniform(-1, 1, l.weights.size) * scale).astype(np.float32)
        if l.biases is not None:
            l.biases[:] = rng.uniform(-.1, .1, l.biases.size).astype(np.float32)
        if l.scales is not None:
            l.scales[:] = 1
        if l.rolling_mean is not None:
            l.rolling_mean[:] = 0
        if l.rolling_variance is not None:
            l.rolling_variance[:] = 1
