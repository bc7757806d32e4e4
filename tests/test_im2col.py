"""im2col / col2im: darknet's layout, the order of col2im's additions, fast == reference bitwise."""

import numpy as np
import pytest

from conftest import bits, run_in_cuda_simulator
from darkpy.errors import DarkpyError
from darkpy.kernels import im2col as fast
from darkpy.kernels.reference import im2col as ref


def naive_im2col(im, channels, height, width, ksize, stride, pad):
    """The column matrix from its definition, with numpy indexing (independent of darknet's loops)."""
    out_h = (height + 2 * pad - ksize) // stride + 1
    out_w = (width + 2 * pad - ksize) // stride + 1
    padded = np.zeros((channels, height + 2 * pad + ksize, width + 2 * pad + ksize), np.float32)
    padded[:, pad:pad + height, pad:pad + width] = im.reshape(channels, height, width)
    col = np.zeros((channels, ksize, ksize, out_h, out_w), np.float32)
    for kh in range(ksize):
        for kw in range(ksize):
            col[:, kh, kw] = padded[:, kh:kh + stride * out_h:stride, kw:kw + stride * out_w:stride]
    return col.ravel()


def col_size(channels, height, width, ksize, stride, pad):
    return channels * ksize * ksize * ref.out_size(height, ksize, stride, pad) * ref.out_size(width, ksize, stride, pad)


def test_out_size_truncates_like_c():
    assert ref.out_size(13, 3, 1, 1) == 13
    assert ref.out_size(9, 3, 2, 1) == 5
    assert ref.out_size(2, 3, 2, 0) == 1   # (2-3)/2 is 0 in C: the kernel overhangs, reads 0
    assert ref.out_size(1, 4, 2, 0) == 0   # (1-4)/2 is -1 in C
    assert ref.out_size(1, 5, 1, 0) == -3


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
@pytest.mark.parametrize("shape", [(3, 7, 5, 3, 1, 1), (2, 9, 7, 3, 2, 1), (4, 6, 6, 1, 1, 0),
                                   (2, 8, 8, 5, 3, 2), (1, 4, 4, 4, 4, 0), (3, 5, 9, 2, 2, 1)])
def test_im2col_matches_the_definition(module, shape):
    channels, height, width, ksize, stride, pad = shape
    rng = np.random.default_rng(1)
    im = rng.standard_normal(channels * height * width).astype(np.float32)
    want = naive_im2col(im, channels, height, width, ksize, stride, pad)
    col = np.full(want.size + 5, np.nan, np.float32)
    module.im2col_cpu(im, channels, height, width, ksize, stride, pad, col)
    assert np.array_equal(bits(col[:want.size]), bits(want))
    assert np.isnan(col[want.size:]).all()  # nothing written past the column matrix


def test_im2col_with_an_overhanging_kernel_reads_zeros():
    im = np.arange(1, 9, dtype=np.float32)  # 2 channels of 2x2
    for module in (ref, fast):
        col = np.full(2 * 9, np.nan, np.float32)
        module.im2col_cpu(im, 2, 2, 2, 3, 2, 0, col)  # one output position, taps (2, *) and (*, 2) outside
        assert col.reshape(2, 3, 3)[0].tolist() == [[1, 2, 0], [3, 4, 0], [0, 0, 0]]
        assert col.reshape(2, 3, 3)[1].tolist() == [[5, 6, 0], [7, 8, 0], [0, 0, 0]]


def test_col2im_adds_in_darknets_order():
    """A pixel covered by several taps gets float additions in row order: the result is the
    sequential float sum, which here differs from a float64 sum rounded once."""
    channels, height, width, ksize, stride, pad = 1, 3, 3, 3, 1, 1
    rows = ksize * ksize
    col = np.zeros((rows, 3, 3), np.float32)
    # the centre pixel (1, 1) is seen by every tap at the matching output position
    values = np.array([1e8, 1, -1e8, 1, 1, 1, 1, 1, 1], np.float32)
    for c in range(rows):
        kh, kw = divmod(c, ksize)
        col[c, 1 - kh + pad, 1 - kw + pad] = values[c]
    for module in (ref, fast):
        im = np.zeros(9, np.float32)
        module.col2im_cpu(col.ravel(), channels, height, width, ksize, stride, pad, im)
        sequential = np.float32(0)
        for v in values:
            sequential = np.float32(sequential + v)
        assert im[4] == sequential == np.float32(6)   # the 1 added to 1e8 is lost
        assert float(np.sum(values.astype(np.float64))) == 7.0
        assert np.count_nonzero(im) == 1


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_col2im_is_the_adjoint_of_im2col(module):
    """<im2col(x), y> == <x, col2im(y)> in float64 (exact for small integers)."""
    rng = np.random.default_rng(3)
    for channels, height, width, ksize, stride, pad in [(2, 7, 6, 3, 2, 1), (3, 5, 5, 3, 1, 1), (1, 8, 5, 4, 3, 2)]:
        x = rng.integers(-8, 8, channels * height * width).astype(np.float32)
        n = col_size(channels, height, width, ksize, stride, pad)
        y = rng.integers(-8, 8, n).astype(np.float32)
        col = np.zeros(n, np.float32)
        module.im2col_cpu(x, channels, height, width, ksize, stride, pad, col)
        back = np.zeros_like(x)
        module.col2im_cpu(y, channels, height, width, ksize, stride, pad, back)
        assert np.dot(col.astype(np.float64), y) == np.dot(x.astype(np.float64), back)


def _random_shapes(rng, count):
    shapes = []
    while len(shapes) < count:
        channels, height, width = (int(v) for v in rng.integers(1, 12, 3))
        ksize, stride, pad = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(0, 3))
        if ref.out_size(height, ksize, stride, pad) >= 1 and ref.out_size(width, ksize, stride, pad) >= 1:
            shapes.append((channels, height, width, ksize, stride, pad))
    return shapes


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference_bitwise(seed):
    rng = np.random.default_rng(seed)
    shapes = _random_shapes(rng, 20)
    shapes.append((64, 20, 20, 3, 1, 1))
    shapes.append((40, 17, 23, 5, 2, 2))
    for shape in shapes:
        channels, height, width, ksize, stride, pad = shape
        n = col_size(channels, height, width, ksize, stride, pad)
        im = (rng.standard_normal(channels * height * width) * 1e3).astype(np.float32)
        a = np.full(n, np.nan, np.float32)
        b = a.copy()
        ref.im2col_cpu(im, *shape, a)
        fast.im2col_cpu(im, *shape, b)
        assert np.array_equal(bits(a), bits(b)), shape
        c = np.full(n, np.nan, np.float32)
        fast.im2col_parallel(im, *shape, c)   # the threaded path, whatever the size
        assert np.array_equal(bits(a), bits(c)), shape
        col = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
        x = rng.standard_normal(channels * height * width).astype(np.float32)
        y, z = x.copy(), x.copy()
        ref.col2im_cpu(col, *shape, x)
        fast.col2im_cpu(col, *shape, y)
        fast.col2im_parallel(col, *shape, z)
        assert np.array_equal(bits(x), bits(y)), shape
        assert np.array_equal(bits(x), bits(z)), shape


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_bad_arguments_raise(module):
    im = np.zeros(2 * 4 * 4, np.float32)
    col = np.zeros(2 * 9 * 16, np.float32)
    module.im2col_cpu(im, 2, 4, 4, 3, 1, 1, col)
    with pytest.raises(DarkpyError):
        module.im2col_cpu(im, 2, 4, 4, 3, 1, 1, col[:-1])          # column matrix too small
    with pytest.raises(DarkpyError):
        module.col2im_cpu(col, 3, 4, 4, 3, 1, 1, im)               # image too small
    with pytest.raises(DarkpyError):
        module.im2col_cpu(im, 2, 4, 4, 3, 0, 1, col)               # stride 0
    with pytest.raises(DarkpyError):
        module.im2col_cpu(im, 2, 1, 1, 4, 2, 0, col)               # no output position
    with pytest.raises(DarkpyError):
        module.im2col_cpu(im.astype(np.float64), 2, 4, 4, 3, 1, 1, col)


CUDA_SIM_SCRIPT = r"""
import numpy as np
from darkpy.kernels import im2col_cuda as G
from darkpy.kernels.reference import im2col as R
rng = np.random.default_rng(0)
bad = []
for shape in [(2, 5, 4, 3, 1, 1), (3, 6, 7, 3, 2, 1), (2, 2, 2, 3, 2, 0), (1, 7, 7, 5, 3, 2), (4, 3, 3, 1, 1, 0)]:
    C, H, W, k, s, p = shape
    n = C * k * k * R.out_size(H, k, s, p) * R.out_size(W, k, s, p)
    im = rng.standard_normal(C * H * W).astype(np.float32)
    a = np.full(n, np.nan, np.float32)
    b = a.copy()
    R.im2col_cpu(im, *shape, a)
    G.im2col_gpu(im, *shape, b)
    col = (rng.standard_normal(n) * np.exp(rng.uniform(-15, 15, n))).astype(np.float32)
    x = rng.standard_normal(C * H * W).astype(np.float32)
    y = x.copy()
    R.col2im_cpu(col, *shape, x)
    G.col2im_gpu(col, *shape, y)
    same_col = np.array_equal(a.view(np.uint32), b.view(np.uint32))
    if not (same_col and np.array_equal(x.view(np.uint32), y.view(np.uint32))):
        bad.append(shape)
try:
    G.im2col_gpu(im, 2, 5, 4, 3, 1, 1, np.zeros(3, np.float32))
    bad.append("no size check")
except Exception as e:
    if type(e).__name__ != "DarkpyError":
        bad.append(repr(e))
print("MISMATCH" if bad else "BITWISE", bad)
"""


def test_cuda_twins_equal_reference_in_the_simulator():
    """im2col_cuda under NUMBA's CUDA simulator equals the reference bitwise."""
    out = run_in_cuda_simulator(CUDA_SIM_SCRIPT)
    assert out.startswith("BITWISE"), out
