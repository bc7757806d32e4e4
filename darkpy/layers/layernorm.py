"""The ``[layernorm]`` layer (beyond darknet): each image normalised over all its c*h*w values.

``x_norm = (x - mean_b)/sqrt(var_b + eps)`` with the mean and *biased* variance of
image b over (c, h, w), then ``y = scales[c]*x_norm + biases[c]`` with learnable
per-channel scales and biases (ONNX ``LayerNormalization`` with ``axis=1`` whose
scale/bias tensors are constant over h, w).  ``eps=`` defaults to 1e-5.

Axis mapping onto darknet's batchnorm kernels: group normalisation with one
group, i.e. batchnorm's (batch, channels, spatial) view is

    batch' = 1,   channels' = batch  (one "channel" per image),   spatial' = c*h*w

which is the NCHW buffer unchanged.  Everything else (kernels, backward, update,
weights) is ``darkpy.layers.groupnorm``'s; see there.
"""

from darkpy.layers import groupnorm
from darkpy.layers.groupnorm import DEFAULT_EPS, backward, forward, update, weight_tensors  # noqa: F401


def parse(section, params):
    """``[layernorm]``: ``eps=`` (1e-5)."""
    eps = section.find_float("eps", DEFAULT_EPS)
    return make_layernorm_layer(params.batch, params.w, params.h, params.c, eps)


def make_layernorm_layer(batch, w, h, c, eps=DEFAULT_EPS):
    """A ``[layernorm]`` layer over (batch, c, h, w): group normalisation with ``groups = 1``."""
    return groupnorm.make_norm_layer("layernorm", batch, w, h, c, 1, eps)
