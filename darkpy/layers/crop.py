"""``[crop]``: darknet's crop_layer.c and ``parse_crop`` of parser.c.

darknet's CPU forward only crops (and in training may flip) and maps pixels
``x -> 2x - 1`` (``x`` itself with ``noadjust``); ``angle``, ``saturation``,
``exposure`` and ``shift`` are stored but used by darknet's GPU path alone.
The layer has no delta and its backward does nothing, as in darknet.
"""

import numpy as np

from darkpy import crand
from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_crop``: crop_height/crop_width (1), flip (0), angle (0), saturation/exposure (1), shift, noadjust."""
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    crop_height = section.find_int("crop_height", 1)
    crop_width = section.find_int("crop_width", 1)
    flip = section.find_int("flip", 0)
    angle = section.find_float("angle", 0)
    saturation = section.find_float("saturation", 1)
    exposure = section.find_float("exposure", 1)
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [crop] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})", **where)
    if not (1 <= crop_height <= params.h and 1 <= crop_width <= params.w):
        raise CfgError(f"crop {crop_width}x{crop_height} does not fit the {params.w}x{params.h} "
                       "input: expected 1 <= crop_width <= width and 1 <= crop_height <= height",
                       **where)
    noadjust = section.find_int("noadjust", 0)
    l = make_crop_layer(params.batch, params.h, params.w, params.c, crop_height, crop_width,
                        flip, angle, saturation, exposure)
    l.shift = np.float32(section.find_float("shift", 0))
    l.noadjust = noadjust
    return l


def make_crop_layer(batch, h, w, c, crop_height, crop_width, flip, angle, saturation, exposure):
    """darknet's ``make_crop_layer``: output ``crop_width x crop_height x c``; ``scale = (float)crop_height / h``.

    Only ``output`` is allocated (no delta), as in darknet.
    """
    l = Layer("crop")
    l.batch = batch
    l.h = h
    l.w = w
    l.c = c
    l.scale = np.float32(crop_height) / np.float32(h)
    l.flip = flip
    l.angle = np.float32(angle)
    l.saturation = np.float32(saturation)
    l.exposure = np.float32(exposure)
    l.out_w = crop_width
    l.out_h = crop_height
    l.out_c = c
    l.inputs = l.w * l.h * l.c
    l.outputs = l.out_w * l.out_h * l.out_c
    l.output = zeros(l.outputs * batch, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_crop_layer``.

    Draws from C's ``rand()`` (``darkpy.crand``) in darknet's order even when not
    training: a flip coin (only when ``l.flip``), then the row and column offsets.
    Inference then uses the centred crop without flip.  Pixels become
    ``x*2 - 1`` (``x*1 + 0`` with ``noadjust``), in float.
    """
    flip = bool(l.flip) and crand.rand() % 2 != 0
    dh = crand.rand() % (l.h - l.out_h + 1)
    dw = crand.rand() % (l.w - l.out_w + 1)
    scale = np.float32(2)
    trans = np.float32(-1)
    if l.noadjust:
        scale = np.float32(1)
        trans = np.float32(0)
    if not net.train:
        flip = False
        dh = (l.h - l.out_h) // 2
        dw = (l.w - l.out_w) // 2
    family("pooling").forward_crop(l.batch, l.h, l.w, l.c, l.out_h, l.out_w, dh, dw, flip,
                                   scale, trans, net.input, l.output)


def backward(l, net):
    """darknet's ``backward_crop_layer`` does nothing."""
