"""The ``[groupnorm]`` layer (beyond darknet), and the machinery ``[layernorm]`` and ``[instancenorm]`` share.

Group normalisation (Wu & He, 2018; ONNX ``GroupNormalization``, opset 21) of a
(batch, c, h, w) input: the ``c`` channels split into ``groups`` groups of
``cpg = c/groups`` consecutive channels, and each (image, group) is normalised
over its cpg*h*w values with its own mean and *biased* variance,
``x_norm = (x - mean)/sqrt(var + eps)``, then ``y = scales[c]*x_norm + biases[c]``
with learnable per-channel scales and biases.  The statistics are those of the
sample in training and in inference alike (there are no running statistics).

How the axes map onto darknet's batchnorm kernels (which normalise each channel
over (batch, spatial) of a (batch, channels, spatial) tensor): in NCHW memory one
group of one image is contiguous, so the buffer read as batchnorm's layout with

    batch' = 1,   channels' = batch*groups  (index b*groups + g),   spatial' = cpg*h*w

holds exactly one (image, group) per batchnorm channel.  darknet's ``mean_cpu`` and
the biased/eps-inside variants of its variance, normalize and delta kernels run on
that view (``darkpy.kernels.norms``); the affine part and its gradients
(``scale_bias``, ``add_bias``, ``backward_bias``, ``backward_scale_cpu``) run on the
ordinary (batch, c, h*w) view.  ``mean``/``variance``/``mean_delta``/``variance_delta``
hold batch*groups values, image-major.

Backward: darknet's batchnorm backward sequence; on the biased variance it is the
textbook gradient (checked by central differences in tests/test_norms.py and by
``darkpy gradcheck``).  The layer *adds* its input gradient into ``net.delta``
(darknet's convention for most layers; darknet's own [batchnorm] copies instead).

Update: darknet's convention for scales and biases (``update_convolutional_layer``'s
bias/scale part): ``rate = learning_rate*learning_rate_scale/batch`` in float,
``biases += rate*bias_updates; bias_updates *= momentum``, the same for scales; no
weight decay (darknet never decays biases or batchnorm scales) and no Adam (darknet's
CPU update of a convolutional layer has none either).

Weights (our convention, documented for ``darkpy.weights``): per layer ``scales``
(c floats) then ``biases`` (c floats).
"""

import numpy as np

from darkpy.errors import ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, ones, zeros

f32 = np.float32

#: The default epsilon of every layer of this family (ONNX's, PyTorch's and Caffe's).
DEFAULT_EPS = 1e-5


def parse(section, params):
    """``[groupnorm]``: ``groups=`` (required, must divide the incoming channels), ``eps=`` (1e-5)."""
    groups = section.find_int("groups", None)
    if groups is None:
        from darkpy.errors import CfgError
        raise CfgError("[groupnorm] needs groups= (a divisor of the incoming channels)",
                       path=section.path, line=section.line, section=section.header,
                       layer=params.index)
    eps = section.find_float("eps", DEFAULT_EPS)
    return make_groupnorm_layer(params.batch, params.w, params.h, params.c, groups, eps)


def make_groupnorm_layer(batch, w, h, c, groups, eps=DEFAULT_EPS):
    """A ``[groupnorm]`` layer over (batch, c, h, w) with ``groups`` groups (w before h, as darknet's
    make_batchnorm_layer).  Scales start at 1 and biases at 0."""
    return make_norm_layer("groupnorm", batch, w, h, c, groups, eps)


def make_norm_layer(type, batch, w, h, c, groups, eps):
    """Allocate a layer of this family: output, delta, x, x_norm (batch*c*h*w); scales = 1,
    biases, scale_updates, bias_updates (c); mean, variance, mean_delta, variance_delta
    (batch*groups).  ``eps`` is rounded to float (a C float option)."""
    for name, value in (("batch", batch), ("w", w), ("h", h), ("c", c), ("groups", groups)):
        if int(value) < 1:
            raise ShapeError(f"{type}: {name} must be at least 1, got {value}")
    batch, w, h, c, groups = int(batch), int(w), int(h), int(c), int(groups)
    if c % groups:
        raise ShapeError(f"{type}: groups={groups} does not divide the {c} input channels")
    eps = f32(eps)
    if not eps >= 0:
        raise ShapeError(f"{type}: eps must be a non-negative number, got {eps}")
    l = Layer(type)
    l.batch = batch
    l.h = l.out_h = h
    l.w = l.out_w = w
    l.c = l.out_c = c
    l.n = c
    l.groups = groups
    l.eps = eps
    l.learning_rate_scale = f32(1)  # the builder sets it from learning_rate= as darknet's parser does
    l.inputs = l.outputs = c * h * w
    size = batch * l.outputs
    l.output = zeros(size, np.float32)
    l.delta = zeros(size, np.float32)
    l.x = zeros(size, np.float32)
    l.x_norm = zeros(size, np.float32)
    l.scales = ones(c, np.float32)
    l.scale_updates = zeros(c, np.float32)
    l.biases = zeros(c, np.float32)
    l.bias_updates = zeros(c, np.float32)
    l.nbiases = c
    l.mean = zeros(batch * groups, np.float32)
    l.variance = zeros(batch * groups, np.float32)
    l.mean_delta = zeros(batch * groups, np.float32)
    l.variance_delta = zeros(batch * groups, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = update
    return l


def forward(l, net):
    """Copy ``net.input`` to the output, then ``groupnorm_forward`` (statistics of each
    (image, group), normalisation, per-channel scale and bias).  Same in training and inference."""
    norms = family("norms")
    family("blas").copy_cpu(l.outputs * l.batch, net.input, 1, l.output, 1)
    norms.groupnorm_forward(l.output, l.x, l.x_norm, l.mean, l.variance, l.scales, l.biases,
                            l.eps, l.batch, l.out_c, l.out_h * l.out_w, l.groups)


def backward(l, net):
    """``groupnorm_backward`` on ``l.delta`` (accumulating bias/scale updates), then
    ``net.delta += l.delta`` when there is a previous layer."""
    norms = family("norms")
    norms.groupnorm_backward(l.delta, l.x, l.x_norm, l.mean, l.variance, l.scales,
                             l.bias_updates, l.scale_updates, l.mean_delta, l.variance_delta,
                             l.eps, l.batch, l.out_c, l.out_h * l.out_w, l.groups)
    if net.delta is not None:
        family("blas").axpy_cpu(l.outputs * l.batch, np.float32(1), l.delta, 1, net.delta, 1)


def update(l, a):
    """SGD with momentum on scales and biases, darknet's float arithmetic (see the module docstring)."""
    blas = family("blas")
    learning_rate = f32(f32(a.learning_rate) * f32(l.learning_rate_scale))
    momentum = f32(a.momentum)
    rate = f32(learning_rate / f32(int(a.batch)))
    blas.axpy_cpu(l.n, rate, l.bias_updates, 1, l.biases, 1)
    blas.scal_cpu(l.n, momentum, l.bias_updates, 1)
    blas.axpy_cpu(l.n, rate, l.scale_updates, 1, l.scales, 1)
    blas.scal_cpu(l.n, momentum, l.scale_updates, 1)


def weight_tensors(l):
    """What a ``.weights`` file holds for a layer of this family, in order: ``(name, buffer, count)``
    for the per-channel scales, then the biases."""
    return [("scales", l.scales, l.c), ("biases", l.biases, l.c)]
