"""darkpy.box against two independent formulations.

* bit-exactness: a numpy float32 scalar transliteration of C's float
  arithmetic (numpy float32 scalars round every operation to float32, as C's
  float operations do), compared bitwise;
* the mathematics: the same quantities computed in float64 from the box
  geometry (interval intersection), compared with a tolerance that is only
  float32 rounding.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpy.box import (box_intersection, box_iou, box_rmse, box_union, float_to_box, make_box,
                        overlap)

f32 = np.float32


def bits(x):
    return np.float32(x).view(np.uint32)


def same_bits(a, b):
    return bits(a) == bits(b)


def c_overlap(x1, w1, x2, w2):
    """C's overlap in numpy float32 scalars."""
    l1 = x1 - w1 / f32(2)
    l2 = x2 - w2 / f32(2)
    left = l1 if l1 > l2 else l2
    r1 = x1 + w1 / f32(2)
    r2 = x2 + w2 / f32(2)
    right = r1 if r1 < r2 else r2
    return right - left


def c_iou(a, b):
    w = c_overlap(a[0], a[2], b[0], b[2])
    h = c_overlap(a[1], a[3], b[1], b[3])
    inter = f32(0) if (w < 0 or h < 0) else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def exact_iou(a, b):
    """IoU in float64 from the interval geometry (no shared code with box.c's form)."""
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    ix = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    iy = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    inter = max(ix, 0.0) * max(iy, 0.0) if ix >= 0 and iy >= 0 else 0.0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


coord = st.floats(-0.5, 1.5, width=32)
size = st.floats(float(np.float32(1e-3)), 1.0, width=32)
boxes = st.tuples(coord, coord, size, size).map(lambda t: make_box(*t))


@settings(max_examples=100, deadline=None)
@given(boxes, boxes)
def test_iou_bitwise_and_geometry(a, b):
    ours = box_iou(a, b)
    assert same_bits(ours, c_iou(a, b))
    # float32 rounds each edge x -/+ w/2 to within an ulp of |x| + w; relative to the
    # smallest side that is the size of the error the float formula may make
    edge_ulp = float(np.finfo(np.float32).eps) * (max(abs(float(v)) for v in a[:2] + b[:2]) + 1)
    smallest = min(float(v) for v in a[2:] + b[2:])
    assert ours == pytest.approx(exact_iou(a, b), abs=1e-6 + 8 * edge_ulp / smallest)


@settings(max_examples=100, deadline=None)
@given(boxes, boxes)
def test_rmse_is_double_then_float(a, b):
    d = [np.float64(a[k] - b[k]) for k in range(4)]  # float differences, promoted
    expected = np.float32(math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2 + d[3] ** 2))
    assert same_bits(box_rmse(a, b), expected)
    exact = math.sqrt(sum((float(a[k]) - float(b[k])) ** 2 for k in range(4)))
    assert box_rmse(a, b) == pytest.approx(exact, rel=1e-6, abs=1e-7)


def test_overlap_signs():
    # [0, 1] and [2, 3]: apart by 1
    assert overlap(f32(.5), f32(1), f32(2.5), f32(1)) == -1.0
    # one inside the other: the smaller length
    assert overlap(f32(.5), f32(1), f32(.5), f32(.25)) == 0.25
    assert same_bits(overlap(f32(.3), f32(.7), f32(.9), f32(.3)),
                     c_overlap(f32(.3), f32(.7), f32(.9), f32(.3)))


def test_identical_disjoint_and_touching():
    a = make_box(.5, .5, .25, .5)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, make_box(.9, .5, .25, .5)) == 0.0  # apart in x
    assert box_iou(a, make_box(.5, .125, .25, .25)) == 0.0  # edges touch in y: overlap 0
    assert box_intersection(a, make_box(.5, .9, .25, .2)) == 0.0


def test_float_iou_of_a_box_with_itself_can_exceed_one():
    """Rounding in C's float formula: the overlap's edges (x -/+ w/2) round, so a box's
    intersection with itself can come out one ulp above its area: iou = 1.0000001."""
    a = make_box(0.8469430804252625, 0.8469430804252625, 0.5, 1.0)
    assert box_intersection(a, a) == np.float32(0.50000006)
    assert box_union(a, a) == np.float32(0.49999994)
    assert box_iou(a, a) > 1.0
    assert same_bits(box_iou(a, a), c_iou(a, a))


def test_zero_area_boxes_give_nan_as_darknet():
    """0/0: darknet's box_iou returns NaN for two zero-area boxes at the same place."""
    z = make_box(.5, .5, 0, 0)
    assert math.isnan(box_iou(z, z))
    # a zero-area box against a real box: 0 / area = +0
    assert same_bits(box_iou(z, make_box(.5, .5, .2, .2)), 0.0)
    # NaN never wins darknet's ``iou > best_iou`` comparisons
    assert not (box_iou(z, z) > 0)


def test_float_to_box_stride():
    f = np.arange(12, dtype=np.float32)
    assert float_to_box(f[2:], 3) == (2.0, 5.0, 8.0, 11.0)
    assert float_to_box(f, 1) == (0.0, 1.0, 2.0, 3.0)
