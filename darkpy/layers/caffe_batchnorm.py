"""``[batchnorm] style=caffe``: Caffe's BatchNorm layer (BVLC/caffe ``batch_norm_layer.cpp``).

Options: ``use_global_stats`` (0/1; absent: the stored statistics in inference,
the batch's in training, as Caffe's TEST/TRAIN phase), ``moving_average_fraction``
(default .999), ``eps`` (default 1e-5).

State: Caffe's three blobs, here ``rolling_mean`` (the running *sum* of batch means),
``rolling_variance`` (the running sum of unbiased batch variances) and
``scale_factor`` (1 value, the running sum of weights).  With batch statistics each
forward updates them as ``factor = maf*factor + 1``, ``mean_sum = maf*mean_sum + mean``,
``var_sum = maf*var_sum + m/(m-1)*var`` (m = batch*h*w; the correction is 1 for
m = 1).  The stored statistics are ``mean_sum/factor`` and ``var_sum/factor`` (a zero
factor gives zero statistics).

Forward: ``y = (x - mean)/sqrt(var + eps)``, the biased batch variance or the stored
one; no scale or shift (Caffe puts them in a separate Scale layer).  ``mean``/``variance``
keep the statistics used, ``x_norm`` a copy of y.

Backward (in place on ``l.delta``, then added into ``net.delta``):
batch statistics ``dx = (dy - mean(dy) - mean(dy*y)*y)/sqrt(var + eps)``; stored
statistics ``dx = dy/sqrt(var + eps)``.  Caffe's layer has no learnable parameters
(``l.update`` is None).  The kernels (``darkpy.kernels.norms.caffe_bn_*``) mirror
``BatchNormLayer::Forward_cpu`` / ``Backward_cpu`` call by call; see their docstrings.

Weights (our convention, documented for ``darkpy.weights``): per layer the three
blobs in Caffe's order: ``rolling_mean`` (mean_sum, c floats), ``rolling_variance``
(var_sum, c floats), ``scale_factor`` (1 float).
"""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros

f32 = np.float32

#: Caffe's BatchNormParameter defaults.
DEFAULT_MOVING_AVERAGE_FRACTION = .999
DEFAULT_EPS = 1e-5


def parse(section, params):
    """``[batchnorm] style=caffe``: reads use_global_stats, moving_average_fraction, eps."""
    style = section.find_str("style", "caffe")
    if style != "caffe":
        raise CfgError(f"caffe_batchnorm.parse given style={style}", path=section.path,
                       line=section.line, section=section.header, layer=params.index)
    use_global_stats = section.find_int("use_global_stats", -1)
    if use_global_stats not in (-1, 0, 1):
        opt = section.option("use_global_stats")
        raise CfgError(f"option 'use_global_stats' = '{use_global_stats}': expected 0 or 1",
                       path=section.path, line=opt.line if opt else section.line,
                       section=section.header, layer=params.index)
    maf = section.find_float("moving_average_fraction", DEFAULT_MOVING_AVERAGE_FRACTION)
    eps = section.find_float("eps", DEFAULT_EPS)
    return make_caffe_batchnorm_layer(params.batch, params.w, params.h, params.c,
                                      use_global_stats, maf, eps)


def make_caffe_batchnorm_layer(batch, w, h, c, use_global_stats=-1,
                               moving_average_fraction=DEFAULT_MOVING_AVERAGE_FRACTION, eps=DEFAULT_EPS):
    """A Caffe-style batchnorm layer over (batch, c, h, w) (w before h, as make_batchnorm_layer).

    ``l.type`` is ``"batchnorm"`` and ``l.style`` ``"caffe"``.  The three blobs start at zero
    (Caffe's initialisation); ``use_global_stats`` is -1 (by phase), 0 or 1.
    """
    for name, value in (("batch", batch), ("w", w), ("h", h), ("c", c)):
        if int(value) < 1:
            raise ShapeError(f"batchnorm style=caffe: {name} must be at least 1, got {value}")
    if use_global_stats not in (-1, 0, 1):
        raise CfgError(f"batchnorm style=caffe: use_global_stats must be 0, 1 or -1 (by phase), "
                       f"got {use_global_stats}")
    eps = f32(eps)
    if not eps >= 0:
        raise CfgError(f"batchnorm style=caffe: eps must be a non-negative number, got {eps}")
    batch, w, h, c = int(batch), int(w), int(h), int(c)
    l = Layer("batchnorm")
    l.style = "caffe"
    l.batch = batch
    l.h = l.out_h = h
    l.w = l.out_w = w
    l.c = l.out_c = c
    l.inputs = l.outputs = c * h * w
    size = batch * l.outputs
    l.output = zeros(size, np.float32)
    l.delta = zeros(size, np.float32)
    l.x_norm = zeros(size, np.float32)
    l.mean = zeros(c, np.float32)
    l.variance = zeros(c, np.float32)
    l.rolling_mean = zeros(c, np.float32)        # Caffe's blobs_[0]: running mean sum
    l.rolling_variance = zeros(c, np.float32)    # blobs_[1]: running variance sum
    l.scale_factor = zeros(1, np.float32)        # blobs_[2]: running weight sum
    l.use_global_stats = int(use_global_stats)
    l.moving_average_fraction = f32(moving_average_fraction)
    l.eps = eps
    l.global_used = 0
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def uses_global_stats(l, net):
    """Caffe's ``use_global_stats_``: the option when given, else the phase (inference: stored statistics)."""
    if l.use_global_stats == -1:
        return 0 if net.train else 1
    return l.use_global_stats


def forward(l, net):
    """``BatchNormLayer::Forward_cpu``: copy the input, then ``caffe_bn_forward``."""
    family("blas").copy_cpu(l.outputs * l.batch, net.input, 1, l.output, 1)
    l.global_used = uses_global_stats(l, net)
    family("norms").caffe_bn_forward(l.output, l.x_norm, l.mean, l.variance, l.rolling_mean,
                                     l.rolling_variance, l.scale_factor, l.global_used,
                                     l.moving_average_fraction, l.eps, l.batch, l.out_c,
                                     l.out_h * l.out_w)


def backward(l, net):
    """``BatchNormLayer::Backward_cpu`` on ``l.delta`` with the statistics the forward used,
    then ``net.delta += l.delta`` when there is a previous layer."""
    norms = family("norms")
    spatial = l.out_h * l.out_w
    if l.global_used:
        norms.caffe_bn_backward_global(l.delta, l.variance, l.eps, l.batch, l.out_c, spatial)
    else:
        norms.caffe_bn_backward_batch(l.delta, l.x_norm, l.variance, l.eps, l.batch, l.out_c, spatial)
    if net.delta is not None:
        family("blas").axpy_cpu(l.outputs * l.batch, np.float32(1), l.delta, 1, net.delta, 1)


def weight_tensors(l):
    """What a ``.weights`` file holds for this layer, in order: ``(name, buffer, count)`` for
    Caffe's three blobs (mean sum, variance sum, scale factor)."""
    return [("rolling_mean", l.rolling_mean, l.c), ("rolling_variance", l.rolling_variance, l.c),
            ("scale_factor", l.scale_factor, 1)]
