"""The ``[batchnorm]`` layer: darknet's batchnorm_layer.c and ``parse_batchnorm`` (parser.c).

``forward`` and ``backward`` are also what a convolutional or connected layer
with ``batch_normalize=1`` calls on *itself* (as darknet's forward_convolutional_layer
calls forward_batchnorm_layer(l, net)): the copies from ``net.input`` and to
``net.delta`` happen only when ``l.type == "batchnorm"``, everything else works on
``l.output`` / ``l.delta`` in place with the layer's ``out_c`` channels of
``out_h*out_w`` pixels.

Training forward (``net.train``), per channel over the batch:
mean, unbiased variance (divides by n-1; n = 1 gives inf/NaN as in darknet),
rolling statistics ``r = .99f*r + .01f*stat``, ``x_norm = (x - mean)/(sqrt(var) + 1e-6f)``,
``output = scales*x_norm + biases``.  Inference uses the rolling statistics.
Backward: ``bias_updates += sum delta`` (per image), ``scale_updates += sum delta*x_norm``,
then ``delta`` becomes the gradient with respect to the input, with ``var + 1e-5f``.
There is no CPU update in darknet for a standalone batchnorm layer (``l.update`` is None);
a convolutional layer updates its scales itself.
"""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, ones, zeros


def parse(section, params):
    """darknet's ``parse_batchnorm``: no options; the layer takes the incoming shape.

    darkpy's ``style=caffe`` builds Caffe's BatchNorm instead (``darkpy.layers.caffe_batchnorm``).
    """
    style = section.find_str("style", "darknet")
    if style == "caffe":
        from darkpy.layers import caffe_batchnorm
        return caffe_batchnorm.parse(section, params)
    if style != "darknet":
        raise CfgError(f"style={style}: expected darknet or caffe", path=section.path,
                       line=section.option("style").line, section=section.header, layer=params.index)
    return make_batchnorm_layer(params.batch, params.w, params.h, params.c)


def make_batchnorm_layer(batch, w, h, c):
    """darknet's ``make_batchnorm_layer(batch, w, h, c)`` (note: w before h).

    Allocates what darknet allocates (output, delta, scales = 1, scale_updates,
    biases, bias_updates, mean, variance, rolling_mean, rolling_variance) and
    also ``x``, ``x_norm`` (batch*outputs) and ``mean_delta``, ``variance_delta`` (c),
    all zeroed: pjreddie's make_batchnorm_layer forgets these four on the CPU, so
    a standalone ``[batchnorm]`` crashes in darknet itself; the golden dumps were
    made with them allocated zeroed, as here.
    """
    for name, value in (("batch", batch), ("w", w), ("h", h), ("c", c)):
        if int(value) < 1:
            raise ShapeError(f"batchnorm: {name} must be at least 1, got {value}")
    batch, w, h, c = int(batch), int(w), int(h), int(c)
    l = Layer("batchnorm")
    l.batch = batch
    l.h = l.out_h = h
    l.w = l.out_w = w
    l.c = l.out_c = c
    size = h * w * c * batch
    l.output = zeros(size, np.float32)
    l.delta = zeros(size, np.float32)
    l.inputs = w * h * c
    l.outputs = l.inputs

    l.scales = ones(c, np.float32)
    l.scale_updates = zeros(c, np.float32)
    l.biases = zeros(c, np.float32)
    l.bias_updates = zeros(c, np.float32)

    l.mean = zeros(c, np.float32)
    l.variance = zeros(c, np.float32)
    l.rolling_mean = zeros(c, np.float32)
    l.rolling_variance = zeros(c, np.float32)

    # Missing from darknet's CPU allocation (see the docstring).
    l.x = zeros(size, np.float32)
    l.x_norm = zeros(size, np.float32)
    l.mean_delta = zeros(c, np.float32)
    l.variance_delta = zeros(c, np.float32)

    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_batchnorm_layer``.

    A batchnorm layer first copies ``net.input`` into its output (other layer types
    normalise their own ``output`` in place); then ``x`` keeps the pre-normalisation
    values, and the fused blas kernel does darknet's
    mean/variance/rolling/normalize/copy-to-x_norm/scale/bias sequence
    (``batchnorm_forward_train``) or, without ``net.train``, normalisation with
    the rolling statistics (``batchnorm_forward_infer``).
    """
    blas = family("blas")
    spatial = l.out_h * l.out_w
    input = net.input if l.type == "batchnorm" else l.output
    if input is None or input.shape[0] < l.outputs * l.batch:
        raise ShapeError(f"batchnorm: the input holds {0 if input is None else input.shape[0]} floats, "
                         f"the layer needs {l.outputs * l.batch}")
    if net.train:
        blas.batchnorm_forward_train(input, l.output, l.x, l.x_norm, l.mean, l.variance,
                                     l.rolling_mean, l.rolling_variance, l.scales, l.biases,
                                     l.batch, l.out_c, spatial)
    else:
        blas.batchnorm_forward_infer(input, l.output, l.x, l.rolling_mean, l.rolling_variance,
                                     l.scales, l.biases, l.batch, l.out_c, spatial)


def backward(l, net):
    """darknet's ``backward_batchnorm_layer``.

    Without ``net.train`` darknet swaps in the rolling statistics for this call only
    (its ``l`` is a copy); here they are simply passed to the kernel.  A batchnorm
    layer then *copies* (does not add) its delta into ``net.delta``.
    """
    blas = family("blas")
    mean, variance = (l.mean, l.variance) if net.train else (l.rolling_mean, l.rolling_variance)
    blas.batchnorm_backward(l.delta, l.x, l.x_norm, mean, variance, l.scales,
                            l.bias_updates, l.scale_updates, l.mean_delta, l.variance_delta,
                            l.batch, l.out_c, l.out_w * l.out_h)
    if l.type == "batchnorm":
        if net.delta is not None:  # darknet would write through a NULL pointer for a first layer
            blas.copy_cpu(l.outputs * l.batch, l.delta, 1, net.delta, 1)
