"""The ``[instancenorm]`` layer (beyond darknet): each (image, channel) plane normalised over its h*w values.

``x_norm = (x - mean_bc)/sqrt(var_bc + eps)`` with the mean and *biased* variance of
the plane, then ``y = scales[c]*x_norm + biases[c]`` (ONNX ``InstanceNormalization``).
``eps=`` defaults to 1e-5.

Axis mapping onto darknet's batchnorm kernels: group normalisation with one
channel per group, i.e. batchnorm's (batch, channels, spatial) view is

    batch' = 1,   channels' = batch*c  (index b*c + k),   spatial' = h*w

which is the NCHW buffer unchanged.  Everything else (kernels, backward, update,
weights) is ``darkpy.layers.groupnorm``'s; see there.
"""

from darkpy.layers import groupnorm
from darkpy.layers.groupnorm import DEFAULT_EPS, backward, forward, update, weight_tensors  # noqa: F401


def parse(section, params):
    """``[instancenorm]``: ``eps=`` (1e-5)."""
    eps = section.find_float("eps", DEFAULT_EPS)
    return make_instancenorm_layer(params.batch, params.w, params.h, params.c, eps)


def make_instancenorm_layer(batch, w, h, c, eps=DEFAULT_EPS):
    """An ``[instancenorm]`` layer over (batch, c, h, w): group normalisation with ``groups = c``."""
    return groupnorm.make_norm_layer("instancenorm", batch, w, h, c, c, eps)
