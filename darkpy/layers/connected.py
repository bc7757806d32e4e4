"""``[connected]``: darknet's connected_layer.c and ``parse_connected`` of parser.c.

A fully connected layer: ``weights`` is ``outputs x inputs`` (row per output),
forward is ``output = input * weights^T`` (gemm(0,1), M = batch), then batch
normalisation on the layer itself (darknet calls ``forward_batchnorm_layer``
on it, with out_c = outputs channels of 1x1 pixels) or ``add_bias``, then the
activation.  Backward: activation gradient, batchnorm backward or
``backward_bias``, ``weight_updates += delta^T * input`` (gemm(1,0)) and, when
the network has a delta, ``net.delta += delta * weights`` (gemm(0,0) with
BETA 1: a connected layer ADDS into the previous layer's delta).
``update`` is darknet's CPU SGD step, as for a convolutional layer (no CPU Adam).
"""

import math

import numpy as np

from darkpy.crand import STATE, rand_uniform_r
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family, kernel
from darkpy.kernels.reference.activations import check_activation, get_activation
from darkpy.layer import Layer, ones, zeros
from darkpy.layers import batchnorm

f32 = np.float32


@kernel
def rand_uniform_fill(state, scale, out):
    """``out[i] = scale*rand_uniform(-1, 1)`` for every i (float product), from C's ``rand()``."""
    for i in range(out.shape[0]):
        out[i] = scale * rand_uniform_r(state, np.float32(-1), np.float32(1))


def parse(section, params):
    """darknet's ``parse_connected``: ``output`` (1), ``activation`` (logistic), ``batch_normalize`` (0)."""
    output = section.find_int("output", 1)
    activation_s = section.find_str("activation", "logistic")
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    try:
        activation = get_activation(activation_s)
    except CfgError as e:
        opt = section.option("activation")
        raise CfgError(e.message, **{**where, "line": opt.line if opt else section.line}) from None
    batch_normalize = section.find_int("batch_normalize", 0)
    if output < 1:
        opt = section.option("output")
        raise CfgError(f"output={output}: must be at least 1",
                       **{**where, "line": opt.line if opt else section.line})
    try:
        return make_connected_layer(params.batch, params.inputs, output, activation, batch_normalize,
                                    params.net.adam if params.net is not None else 0)
    except ShapeError as e:
        raise ShapeError(e.message, **where) from None


def make_connected_layer(batch, inputs, outputs, activation, batch_normalize, adam):
    """darknet's ``make_connected_layer``.

    ``learning_rate_scale = 1``, h = w = out_h = out_w = 1, c = inputs, out_c = outputs;
    weights ``scale*rand_uniform(-1, 1)`` from C's ``rand()`` stream with the
    float ``scale = sqrt(2./inputs)``, biases 0; with batch_normalize the
    batchnorm buffers (scales 1), with adam m, v, bias_m/v, scale_m/v.
    """
    batch, inputs, outputs = int(batch), int(inputs), int(outputs)
    for name, value in (("batch", batch), ("inputs", inputs), ("outputs", outputs)):
        if value < 1:
            raise ShapeError(f"connected: {name}={value} must be at least 1")
    activation = check_activation(activation)
    l = Layer("connected")
    l.learning_rate_scale = f32(1)
    l.inputs = inputs
    l.outputs = outputs
    l.batch = batch
    l.batch_normalize = int(batch_normalize)
    l.h = 1
    l.w = 1
    l.c = inputs
    l.out_h = 1
    l.out_w = 1
    l.out_c = outputs

    l.output = zeros(batch * outputs, np.float32)
    l.delta = zeros(batch * outputs, np.float32)
    l.weight_updates = zeros(inputs * outputs, np.float32)
    l.bias_updates = zeros(outputs, np.float32)
    l.weights = zeros(outputs * inputs, np.float32)
    l.biases = zeros(outputs, np.float32)
    l.nweights = outputs * inputs
    l.nbiases = outputs

    l.forward = forward
    l.backward = backward
    l.update = update

    scale = f32(math.sqrt(2. / inputs))
    rand_uniform_fill(STATE, scale, l.weights)

    if adam:
        l.m = zeros(inputs * outputs, np.float32)
        l.v = zeros(inputs * outputs, np.float32)
        l.bias_m = zeros(outputs, np.float32)
        l.scale_m = zeros(outputs, np.float32)
        l.bias_v = zeros(outputs, np.float32)
        l.scale_v = zeros(outputs, np.float32)
    if l.batch_normalize:
        l.scales = ones(outputs, np.float32)
        l.scale_updates = zeros(outputs, np.float32)
        l.mean = zeros(outputs, np.float32)
        l.mean_delta = zeros(outputs, np.float32)
        l.variance = zeros(outputs, np.float32)
        l.variance_delta = zeros(outputs, np.float32)
        l.rolling_mean = zeros(outputs, np.float32)
        l.rolling_variance = zeros(outputs, np.float32)
        l.x = zeros(batch * outputs, np.float32)
        l.x_norm = zeros(batch * outputs, np.float32)
    l.activation = activation
    return l


def _check_buffer(name, buf, need):
    if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
        raise DarkpyError(f"connected: net.{name} must be a 1-D float32 array, got {type(buf).__name__}")
    if buf.shape[0] < need:
        raise DarkpyError(f"connected: net.{name} holds {buf.shape[0]} floats, the layer needs {need}")


def forward(l, net):
    """darknet's ``forward_connected_layer``."""
    _check_buffer("input", net.input, l.inputs * l.batch)
    blas = family("blas")
    blas.fill_cpu(l.outputs * l.batch, f32(0), l.output, 1)
    m = l.batch
    k = l.inputs
    n = l.outputs
    family("gemm").gemm(0, 1, m, n, k, 1, net.input, k, l.weights, k, 1, l.output, n)
    if l.batch_normalize:
        batchnorm.forward(l, net)
    else:
        blas.add_bias(l.output, l.biases, l.batch, l.outputs, 1)
    family("activations").activate_array(l.output, l.outputs * l.batch, l.activation)


def backward(l, net):
    """darknet's ``backward_connected_layer``."""
    _check_buffer("input", net.input, l.inputs * l.batch)
    if net.delta is not None:
        _check_buffer("delta", net.delta, l.inputs * l.batch)
    blas = family("blas")
    gemm = family("gemm").gemm
    family("activations").gradient_array(l.output, l.outputs * l.batch, l.activation, l.delta)

    if l.batch_normalize:
        batchnorm.backward(l, net)
    else:
        blas.backward_bias(l.bias_updates, l.delta, l.batch, l.outputs, 1)

    m = l.outputs
    k = l.batch
    n = l.inputs
    gemm(1, 0, m, n, k, 1, l.delta, m, net.input, n, 1, l.weight_updates, n)

    m = l.batch
    k = l.outputs
    n = l.inputs
    if net.delta is not None:
        gemm(0, 0, m, n, k, 1, l.delta, k, l.weights, n, 1, net.delta, n)


def update(l, a):
    """darknet's ``update_connected_layer``: the float SGD step of ``update_convolutional_layer``.

    The scales are updated when ``batch_normalize`` is set (darknet tests that
    flag here, the pointer in the convolutional layer).
    """
    blas = family("blas")
    learning_rate = f32(f32(a.learning_rate) * f32(l.learning_rate_scale))
    momentum = f32(a.momentum)
    decay = f32(a.decay)
    batch = int(a.batch)
    rate = f32(learning_rate / f32(batch))
    blas.axpy_cpu(l.outputs, rate, l.bias_updates, 1, l.biases, 1)
    blas.scal_cpu(l.outputs, momentum, l.bias_updates, 1)

    if l.batch_normalize:
        blas.axpy_cpu(l.outputs, rate, l.scale_updates, 1, l.scales, 1)
        blas.scal_cpu(l.outputs, momentum, l.scale_updates, 1)

    blas.axpy_cpu(l.inputs * l.outputs, f32(-decay * f32(batch)), l.weights, 1, l.weight_updates, 1)
    blas.axpy_cpu(l.inputs * l.outputs, rate, l.weight_updates, 1, l.weights, 1)
    blas.scal_cpu(l.inputs * l.outputs, momentum, l.weight_updates, 1)
