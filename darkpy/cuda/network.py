"""Running darkpy layers and networks on the CUDA device, data kept on the device.

``to_device(l)`` mirrors a host ``Layer``: the same record with every float32
buffer replaced by a device array (darknet's ``l.output_gpu`` etc.); ``pull``
copies buffers back.  The device forward/backward/update functions below mirror
``darkpy/layers/<type>.py`` call for call, with the ``*_cuda`` kernels in place of
the CPU ones, exactly as darknet's ``forward_*_layer_gpu`` mirror its CPU functions
-- except that the ``strict`` profile keeps the CPU's arithmetic (see
``darkpy.kernels.blas_cuda``) where darknet's GPU build has its own
(``darknet-gpu``: ``darkpy.kernels.darknet_gpu_cuda``).

``DeviceNetwork`` runs ``forward_network``/``backward_network``/``update_network``
with every layer's buffers resident on the device; only what a caller pulls comes
back.  ``check_case_device(path, profile)`` is ``darkpy.check.check_case`` on the
device: the entry point of ``darkpy check --device cuda``.
"""

from types import SimpleNamespace

import numpy as np

from darkpy.errors import DarkpyError, DumpError
from darkpy.layer import Layer, UpdateArgs

f32 = np.float32


# ----------------------------------------------------------------------------- buffers

def _cuda():
    from numba import cuda
    return cuda


#: Buffers that stay on the host: the cost (written by host-side loss code, read by
#: ``calc_network_cost``); int arrays other than ``indexes`` are host-side metadata.
_HOST_FIELDS = ("cost",)


def to_device(l, shared=None):
    """A copy of layer ``l`` whose float32 buffers (and maxpool's ``indexes``) are device
    arrays; other fields are shared, and ``host`` is ``l`` itself.

    ``shared`` (a dict, one per network) maps host buffers already on the device to
    their device arrays, so that buffers darknet shares between layers stay shared.
    """
    cuda = _cuda()
    shared = {} if shared is None else shared
    d = Layer(l.type)
    for name in Layer.__slots__:
        if name == "extra_fields":
            continue
        value = getattr(l, name)
        if isinstance(value, np.ndarray) and name not in _HOST_FIELDS and (
                value.dtype == np.float32 or name == "indexes"):
            if id(value) not in shared:
                shared[id(value)] = (value, cuda.to_device(value))
            value = shared[id(value)][1]
        object.__setattr__(d, name, value)
    d.extra_fields = dict(l.extra_fields)
    d.host = l
    return d


def pull(d, l, fields=None):
    """Copy the device buffers of ``d`` (all, or ``fields``) back into host layer ``l``, in place."""
    for name in fields or Layer.__slots__:
        value = getattr(d, name, None)
        host = getattr(l, name, None)
        if hasattr(value, "copy_to_host") and isinstance(host, np.ndarray):
            value.copy_to_host(host)


def _kernels(profile):
    from darkpy.cuda import check_profile
    check_profile(profile)
    from darkpy.kernels import activations_cuda, blas_cuda, gemm_cuda, im2col_cuda
    k = SimpleNamespace(blas=blas_cuda, gemm=gemm_cuda.gemm_gpu, im2col=im2col_cuda,
                        activations=activations_cuda, profile=profile)
    if profile == "darknet-gpu":
        # darknet's own kernels where we have them (bias/scale, backward_bias, the fused axpy
        # of the updates, batchnorm, linear/leaky/relu activations); copies and fills are the
        # same bits either way; gemm (cuBLAS in darknet) and the expf-based activations stay
        # the strict ones (see CUDA.md).
        from darkpy.kernels import darknet_gpu_cuda as dg
        k.dg = dg
        k.activations = dg
        k.blas = SimpleNamespace(copy_gpu=blas_cuda.copy_gpu, fill_gpu=blas_cuda.fill_gpu,
                                 axpy_gpu=dg.axpy_gpu, scal_gpu=dg.scal_gpu, add_bias_gpu=dg.add_bias_gpu,
                                 scale_bias_gpu=dg.scale_bias_gpu,
                                 backward_bias_gpu=lambda *a: dg.backward_bias_gpu(*a, dg.THREADS))
    return k


# ----------------------------------------------------------------------------- batchnorm

def forward_batchnorm(l, net, k):
    """``darkpy.layers.batchnorm.forward`` on the device."""
    spatial = l.out_h * l.out_w
    input = net.input if l.type == "batchnorm" else l.output
    if k.profile == "darknet-gpu":
        k.dg.forward_batchnorm_gpu(input, l, net.train)
    elif net.train:
        k.blas.batchnorm_forward_train_gpu(input, l.output, l.x, l.x_norm, l.mean, l.variance,
                                           l.rolling_mean, l.rolling_variance, l.scales, l.biases,
                                           l.batch, l.out_c, spatial)
    else:
        k.blas.batchnorm_forward_infer_gpu(input, l.output, l.x, l.rolling_mean, l.rolling_variance,
                                           l.scales, l.biases, l.batch, l.out_c, spatial)


def backward_batchnorm(l, net, k):
    """``darkpy.layers.batchnorm.backward`` on the device."""
    mean, variance = (l.mean, l.variance) if net.train else (l.rolling_mean, l.rolling_variance)
    if k.profile == "darknet-gpu":
        k.dg.backward_batchnorm_gpu(l, mean, variance)
    else:
        k.blas.batchnorm_backward_gpu(l.delta, l.x, l.x_norm, mean, variance, l.scales,
                                      l.bias_updates, l.scale_updates, l.mean_delta, l.variance_delta,
                                      l.batch, l.out_c, l.out_w * l.out_h)
    if l.type == "batchnorm":
        k.blas.copy_gpu(l.outputs * l.batch, l.delta, 1, net.delta, 1)


# ----------------------------------------------------------------------------- convolutional

def forward_convolutional(l, net, k):
    """``darkpy.layers.convolutional.forward`` on the device: im2col + gemm per image and group."""
    k.blas.fill_gpu(l.outputs * l.batch, f32(0), l.output, 1)
    m = l.n // l.groups
    kk = l.size * l.size * l.c // l.groups
    n = l.out_w * l.out_h
    group_in = l.c // l.groups * l.h * l.w
    for i in range(l.batch):
        for j in range(l.groups):
            a = l.weights[j * l.nweights // l.groups:]
            b = net.workspace
            c = l.output[(i * l.groups + j) * n * m:]
            im = net.input[(i * l.groups + j) * group_in:]
            if l.size == 1:
                b = im
            else:
                k.im2col.im2col_gpu(im, l.c // l.groups, l.h, l.w, l.size, l.stride, l.pad, b)
            k.gemm(0, 0, m, n, kk, 1, a, kk, b, n, 1, c, n)
    if l.batch_normalize:
        forward_batchnorm(l, net, k)
    else:
        k.blas.add_bias_gpu(l.output, l.biases, l.batch, l.n, l.out_h * l.out_w)
    k.activations.activate_array_gpu(l.output, l.outputs * l.batch, l.activation)


def backward_convolutional(l, net, k):
    """``darkpy.layers.convolutional.backward`` on the device."""
    m = l.n // l.groups
    n = l.size * l.size * l.c // l.groups
    kk = l.out_w * l.out_h
    k.activations.gradient_array_gpu(l.output, l.outputs * l.batch, l.activation, l.delta)
    if l.batch_normalize:
        backward_batchnorm(l, net, k)
    else:
        k.blas.backward_bias_gpu(l.bias_updates, l.delta, l.batch, l.n, kk)
    group_in = l.c // l.groups * l.h * l.w
    for i in range(l.batch):
        for j in range(l.groups):
            a = l.delta[(i * l.groups + j) * m * kk:]
            b = net.workspace
            c = l.weight_updates[j * l.nweights // l.groups:]
            im = net.input[(i * l.groups + j) * group_in:]
            if l.size == 1:
                b = im
            else:
                k.im2col.im2col_gpu(im, l.c // l.groups, l.h, l.w, l.size, l.stride, l.pad, b)
            k.gemm(0, 1, m, n, kk, 1, a, kk, b, kk, 1, c, n)
            if net.delta is not None:
                imd = net.delta[(i * l.groups + j) * group_in:]
                a = l.weights[j * l.nweights // l.groups:]
                b = l.delta[(i * l.groups + j) * m * kk:]
                c = net.workspace
                if l.size == 1:
                    c = imd
                k.gemm(1, 0, n, kk, m, 1, a, n, b, kk, 0, c, kk)
                if l.size != 1:
                    k.im2col.col2im_gpu(net.workspace, l.c // l.groups, l.h, l.w, l.size, l.stride,
                                        l.pad, imd)


def update_convolutional(l, a, k):
    """``darkpy.layers.convolutional.update`` on the device (SGD with momentum and decay, float)."""
    learning_rate = f32(f32(a.learning_rate) * f32(l.learning_rate_scale))
    momentum = f32(a.momentum)
    decay = f32(a.decay)
    batch = int(a.batch)
    rate = f32(learning_rate / f32(batch))
    k.blas.axpy_gpu(l.n, rate, l.bias_updates, 1, l.biases, 1)
    k.blas.scal_gpu(l.n, momentum, l.bias_updates, 1)
    if l.scales is not None:
        k.blas.axpy_gpu(l.n, rate, l.scale_updates, 1, l.scales, 1)
        k.blas.scal_gpu(l.n, momentum, l.scale_updates, 1)
    k.blas.axpy_gpu(l.nweights, f32(-decay * f32(batch)), l.weights, 1, l.weight_updates, 1)
    k.blas.axpy_gpu(l.nweights, rate, l.weight_updates, 1, l.weights, 1)
    k.blas.scal_gpu(l.nweights, momentum, l.weight_updates, 1)


#: layer type -> (forward, backward, update) on the device.
LAYERS = {
    "batchnorm": (forward_batchnorm, backward_batchnorm, None),
    "convolutional": (forward_convolutional, backward_convolutional, update_convolutional),
}


def _shapes():
    from darkpy.kernels import pooling_cuda, shapes_cuda, yolo_cuda
    for module in (shapes_cuda, pooling_cuda, yolo_cuda):
        LAYERS.update(module.LAYERS)


def supported(l):
    """True when layer ``l`` has a device implementation."""
    _shapes()
    return l.type in LAYERS


# ----------------------------------------------------------------------------- a network on the device

class DeviceNetwork:
    """A darkpy ``Network`` whose layers run on the device with their buffers resident there.

    ``forward()``, ``backward()``, ``update()`` mirror ``darkpy.network``'s
    ``forward_network``, ``backward_network`` and ``update_network``;
    ``pull_layer(i, fields)`` copies buffers back into the host network.
    """

    def __init__(self, net, profile="strict"):
        _shapes()
        for i, l in enumerate(net.layers):
            if l.type not in LAYERS:
                raise DarkpyError(f"layer {i} ({l.type}) has no CUDA implementation yet",
                                  layer=i)
        cuda = _cuda()
        self.net = net
        self.k = _kernels(profile)
        shared = {}
        self.layers = [to_device(l, shared) for l in net.layers]
        self.input = cuda.to_device(net.input)
        self.truth = None if net.truth is None else cuda.to_device(net.truth)
        self.workspace = None if net.workspace is None else cuda.to_device(net.workspace)

    def _net(self, **fields):
        n = SimpleNamespace(input=self.input, delta=None, truth=self.truth, workspace=self.workspace,
                            train=self.net.train, index=0, layers=self.layers, host_truth=self.net.truth,
                            w=self.net.w, h=self.net.h)
        for key, value in fields.items():
            setattr(n, key, value)
        return n

    def push_input(self):
        """Copy the host network's ``input`` (and ``truth``) to the device."""
        self.input.copy_to_device(self.net.input)
        if self.truth is not None:
            self.truth.copy_to_device(self.net.truth)

    def forward(self):
        """``forward_network`` on the device, then ``calc_network_cost`` from the layers' host costs."""
        from darkpy.network import calc_network_cost
        n = self._net()
        for i, l in enumerate(self.layers):
            n.index = i
            if l.delta is not None:
                self.k.blas.fill_gpu(l.outputs * l.batch, 0, l.delta, 1)
            LAYERS[l.type][0](l, n, self.k)
            n.input = l.output
            if l.truth:
                n.truth = l.output
        calc_network_cost(self.net)

    def backward(self):
        """``backward_network`` on the device: layers in reverse, given their predecessor's buffers."""
        for i in range(len(self.layers) - 1, -1, -1):
            l = self.layers[i]
            if l.stopbackward:
                break
            n = self._net(index=i)
            if i > 0:
                n.input = self.layers[i - 1].output
                n.delta = self.layers[i - 1].delta
            backward = LAYERS[l.type][1]
            if backward is not None:
                backward(l, n, self.k)

    def update(self, a=None):
        """``update_network`` (or, given ``UpdateArgs`` ``a``, only the per-layer steps)."""
        if a is None:
            from darkpy.network import get_current_rate
            net = self.net
            a = UpdateArgs(batch=net.batch * net.subdivisions, learning_rate=get_current_rate(net),
                           momentum=net.momentum, decay=net.decay, adam=net.adam,
                           B1=net.B1, B2=net.B2, eps=net.eps)
            net.t += 1
            a.t = net.t
        for l in self.layers:
            update = LAYERS[l.type][2]
            if update is not None:
                update(l, a, self.k)

    def pull_layer(self, i, fields=None):
        pull(self.layers[i], self.net.layers[i], fields)
        return self.net.layers[i]


# ----------------------------------------------------------------------------- darkpy check --device cuda

def _single_layer_net(l, input, delta, workspace, train):
    cuda = _cuda()
    return SimpleNamespace(input=cuda.to_device(input), delta=None if delta is None else cuda.to_device(delta),
                           workspace=None if workspace is None else cuda.to_device(workspace),
                           truth=None, train=train, index=0)


def _snap(out, d, l, fields):
    pull(d, l, fields)
    for f in fields:
        v = getattr(l, f, None)
        if isinstance(v, np.ndarray):
            out[f] = v.copy()


def run_case_device(case, profile="strict"):
    """``darkpy.check.run_case`` on the device: {tensor name: computed array}.

    Batchnorm and convolutional cases run here; network cases run when every
    layer type has a device implementation (else ``DarkpyError``).
    """
    from darkpy.check import _given, _param
    k = _kernels(profile)
    p = case.params
    if case.kind == "batchnorm":
        from darkpy.layers import batchnorm
        batch, c, h, w = (int(_param(case, key)) for key in ("batch", "c", "h", "w"))
        train = int(p.get("train", 1))
        l = batchnorm.make_batchnorm_layer(batch, w, h, c)
        l.scales[:] = _given(case, "scales")
        l.biases[:] = _given(case, "biases")
        l.rolling_mean[:] = _given(case, "rolling_mean_before")
        l.rolling_variance[:] = _given(case, "rolling_variance_before")
        if train:
            l.bias_updates[:] = _given(case, "bias_updates_before")
            l.scale_updates[:] = _given(case, "scale_updates_before")
        net_delta = np.zeros(l.inputs * batch, np.float32)
        d = to_device(l)
        net = _single_layer_net(l, _given(case, "input"), net_delta, None, train)
        out = {}
        forward_batchnorm(d, net, k)
        _snap(out, d, l, ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"))
        if train and "delta_in" in case:
            d.delta.copy_to_device(_given(case, "delta_in"))
            backward_batchnorm(d, net, k)
            _snap(out, d, l, ("bias_updates", "scale_updates", "mean_delta", "variance_delta", "delta"))
            out["net_delta"] = net.delta.copy_to_host()
        return out
    if case.kind == "convolutional":
        from darkpy.kernels.activations import get_activation
        from darkpy.layers import convolutional
        get = lambda key: int(_param(case, key))  # noqa: E731
        bn = get("batch_normalize")
        l = convolutional.make_convolutional_layer(get("batch"), get("h"), get("w"), get("c"), get("filters"),
                                                   get("groups"), get("size"), get("stride"), get("padding"),
                                                   get_activation(p["activation"]), bn, 0, 0, 0)
        l.learning_rate_scale = f32(1)
        for field in ("weights", "biases", "weight_updates", "bias_updates") + (
                ("scales", "scale_updates", "rolling_mean", "rolling_variance") if bn else ()):
            getattr(l, field)[:] = _given(case, field + "_before")
        workspace = np.zeros(max(int(l.workspace_size), 4) // 4, np.float32)
        d = to_device(l)
        net = _single_layer_net(l, _given(case, "input"), _given(case, "net_delta_before"), workspace,
                                int(p.get("train", 1)))
        out = {}
        forward_convolutional(d, net, k)
        _snap(out, d, l, ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"))
        if "delta_in" in case:
            d.delta.copy_to_device(_given(case, "delta_in"))
            backward_convolutional(d, net, k)
            _snap(out, d, l, ("delta", "weight_updates", "bias_updates", "scale_updates", "mean_delta",
                              "variance_delta"))
            out["net_delta"] = net.delta.copy_to_host()
            u = p.get("update")
            if u:
                a = UpdateArgs(batch=int(u["batch"]), learning_rate=f32(u["learning_rate"]),
                               momentum=f32(u["momentum"]), decay=f32(u["decay"]))
                update_convolutional(d, a, k)
                _snap(out, d, l, ("weights", "biases", "scales"))
                for field in ("weight_updates", "bias_updates", "scale_updates"):
                    if getattr(l, field) is not None:
                        pull(d, l, (field,))
                        out[field + "_after"] = getattr(l, field).copy()
        return out
    if case.kind == "network":
        return _run_network_device(case, profile)
    raise DumpError(f"{case.kind} cases do not run on the CUDA device", path=case.path / "case.json")


def _run_network_device(case, profile):
    """``darkpy.check._run_network`` with a ``DeviceNetwork``: tensors pulled after each step."""
    import darkpy.check as check
    from darkpy.description import load
    from darkpy.network import build_network
    from darkpy.weights import load_weights
    net = build_network(load(case.path / str(check._param(case, "cfg"))),
                        batch=int(case.params.get("batch", 0)) or None)
    weights = case.params.get("weights")
    if weights:
        load_weights(net, case.path / weights)
    net.input[:] = check._given(case, "input")
    if "truth" in case:
        net.truth[:] = check._given(case, "truth")
    dev = DeviceNetwork(net, profile)
    wanted = {}
    for name in case.names():
        entry = case.entry(name)
        if entry.stage == "given":
            continue
        if name == "cost":
            wanted[name] = ("forward1", None, None)
            continue
        m = check._LAYER_TENSOR.match(name)
        if not m or int(m.group(2)) >= net.n:
            raise DumpError(f"tensor {name!r}: expected layerNN_<field> of an existing layer",
                            path=case.path / "case.json")
        infer, index, field, after = m.groups()
        step = "forward0" if infer else ("update" if after or entry.stage == "update" else
                                         "forward1" if entry.stage == "forward" else "backward")
        wanted[name] = (step, int(index), field)
    out = {}

    def snap(step):
        for name, (s, index, field) in wanted.items():
            if s != step:
                continue
            if name == "cost":
                out[name] = net.cost.copy()
                continue
            dev.pull_layer(index, (field,))
            v = getattr(net.layers[index], field, None)
            if isinstance(v, np.ndarray):
                out[name] = v.copy()

    for step in check.network_steps(case):
        if step[0] == "forward":
            if step[1]:
                net.seen += net.batch
            net.train = step[1]
            dev.forward()
            snap(f"forward{step[1]}")
        elif step[0] == "backward":
            dev.backward()
            snap("backward")
        else:
            dev.update()
            snap("update")
    return out


def check_case_device(path, profile="strict"):
    """``darkpy.check.check_case`` with the computation on the CUDA device.

    Returns a ``darkpy.check.CheckResult``.  Raises ``DeviceError`` when there is no
    device (the CLI exits 2), ``DarkpyError`` for an unknown profile.
    """
    from darkpy.check import CheckResult, Row, compare_tensor
    from darkpy.cuda import check_profile, require
    from darkpy.dump import read_case
    check_profile(profile)
    device = require()
    case = read_case(path)
    computed = run_case_device(case, profile)
    rows = []
    for name in case.names():
        if case.entry(name).stage == "given":
            continue
        expected = case[name]
        if name not in computed:
            rows.append(Row(name, expected.shape, False, note="darkpy computed no such tensor"))
            continue
        rows.append(compare_tensor(name, expected, computed[name]))
    steps = [f"{case.kind} on {device}, profile {profile}"]
    return CheckResult(str(case.path), case.kind, steps, rows)


__all__ = ["to_device", "pull", "DeviceNetwork", "LAYERS", "supported", "run_case_device",
           "check_case_device"]
