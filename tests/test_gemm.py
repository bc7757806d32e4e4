"""gemm: the fast kernels against the reference bit for bit, the reference against float64 maths.

``darkpy.kernels.reference.gemm`` mirrors darknet's gemm.c loop for loop;
``darkpy.kernels.gemm`` must give the same float32 bits for every element.  The
inputs are chosen so that any change in the order of the roundings would show:
a dynamic range of 1e-20..1e20, denormals, signed zeros and infinities.
"""

import numpy as np
import pytest
from numba import njit

from darkpy.check import bitwise_equal
from darkpy.errors import DarkpyError
from darkpy.kernels import gemm as fast
from darkpy.kernels.reference import gemm as ref

#: The NaN every x86 float operation produces (inf - inf, 0 * inf): sign bit set.
X86_DEFAULT_NAN = np.array([0xFFC00000], np.uint32).view(np.float32)[0]


def bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


def assert_bitwise(got, want):
    if bitwise_equal(got, want):
        return
    diff = np.flatnonzero(bits(got) != bits(want))
    if diff.size:
        k = diff[0]
        raise AssertionError(f"{diff.size} of {got.size} elements differ; first at {k}: "
                             f"got {got[k]!r} ({bits(got)[k]:#010x}), want {want[k]!r} ({bits(want)[k]:#010x})")
    raise AssertionError(f"shapes differ: {got.shape} vs {want.shape}")


def wild(rng, n, nan=False):
    """float32 values spanning 1e-20..1e20 with both signs, plus denormals, -0, +-inf
    (and the x86 default NaN when ``nan``)."""
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-20, 20, n)).astype(np.float32)
    u = rng.random(n)
    x[u < 0.03] = np.inf
    x[(u >= 0.03) & (u < 0.06)] = -np.inf
    den = (u >= 0.06) & (u < 0.14)
    x[den] = (rng.standard_normal(den.sum()) * 1e-40).astype(np.float32)
    x[(u >= 0.14) & (u < 0.2)] = -0.0
    if nan:
        x[(u >= 0.2) & (u < 0.22)] = X86_DEFAULT_NAN
    return x


def plain(rng, n):
    return rng.standard_normal(n).astype(np.float32)


def operands(rng, TA, TB, M, N, K, pad_a=0, pad_b=0, pad_c=0, off=0, make=plain):
    """A, B, C as views at offset ``off`` into larger buffers, with leading dimensions
    ``pad_*`` floats longer than a stored row (darknet passes such pointers)."""
    a_rows, a_cols = (K, M) if TA else (M, K)
    b_rows, b_cols = (N, K) if TB else (K, N)
    lda, ldb, ldc = a_cols + pad_a, b_cols + pad_b, N + pad_c
    A = make(rng, off + a_rows * lda + 3)[off:]
    B = make(rng, off + b_rows * ldb + 5)[off:]
    C = make(rng, off + M * ldc + 2)[off:]
    return A, lda, B, ldb, C, ldc


def run_both(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    want, got = C.copy(), C.copy()
    ref.gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, want, ldc)
    fast.gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, got, ldc)
    return got, want


VARIANTS = [(0, 0), (0, 1), (1, 0), (1, 1)]
SIZES = [(1, 1, 1), (3, 7, 5), (7, 17, 33), (17, 33, 65), (5, 1, 17), (33, 65, 3), (65, 17, 300),
         (4, 16, 8), (9, 47, 600)]


@pytest.mark.parametrize("TA,TB", VARIANTS)
@pytest.mark.parametrize("M,N,K", SIZES)
def test_fast_equals_reference(TA, TB, M, N, K):
    rng = np.random.default_rng([TA, TB, M, N, K])
    for make in (plain, wild):  # plain data shows any reordering, wild data the special values
        for ALPHA in (1.0, 0.5, -1.3):
            for BETA in (0.0, 1.0, 0.7):
                A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, make=make)
                got, want = run_both(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc)
                assert_bitwise(got, want)


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_leading_dimensions_and_offsets(TA, TB):
    """Views at an offset (darknet's ``l.weights + j*nweights/groups``), rows longer than used;
    the floats between rows and past the end must come out untouched."""
    rng = np.random.default_rng([7, TA, TB])
    for M, N, K, off, make in ((6, 19, 37, 5, wild), (13, 40, 9, 1, plain), (70, 530, 260, 3, plain)):
        A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, pad_a=3, pad_b=7, pad_c=11, off=off,
                                          make=make)
        before = C.copy()
        got, want = run_both(TA, TB, M, N, K, np.float32(-1.3), A, lda, B, ldb, np.float32(0.7), C, ldc)
        assert_bitwise(got, want)
        untouched = np.ones(C.size, bool)
        for i in range(M):
            untouched[i * ldc:i * ldc + N] = False
        assert_bitwise(got[untouched], before[untouched])


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_blocking_boundaries(TA, TB):
    """Sizes around the micro-tiles (MR or MR4 x NR), the row block (MC), the K chunk (KC),
    gemm_nn/tn's column block (``_column_block``: B_L2 floats of B for one row block) and
    gemm_nt/tt's task block (SUM_MC x SUM_NC)."""
    rng = np.random.default_rng([11, TA, TB])
    MR, NR, MC, KC = fast.MR, fast.NR, fast.MC, fast.KC
    ncb = fast._column_block(MC, 10 ** 6, KC + 1)  # columns per block for K = KC + 1, M <= MC
    assert NR <= ncb < 400
    for M, N, K in ((MR - 1, NR + 1, KC), (MC + 1, NR - 1, KC + 1), (MR + 1, fast.SUM_NC + 1, 2 * KC + 3),
                    (MC - 1, 2 * NR, KC - 1), (MC, ncb + 3, KC + 1), (2 * MC + 2, 7, 9),
                    (fast.SUM_MC + 1, 40, 11)):
        for make in (plain, wild):
            A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, make=make)
            got, want = run_both(TA, TB, M, N, K, 0.5, A, lda, B, ldb, 0.7, C, ldc)
            assert_bitwise(got, want)


def test_row_panels_cover_the_block_without_padding_where_possible():
    """Panels of 6 and 4 rows tile any row count; multiples of 4 or 6 need no padding row."""
    start, height, rows = (np.zeros(64, np.int64) for _ in range(3))
    for mc in range(1, fast.MC + 1):
        n = fast._row_panels(mc, start, height, rows)
        assert start[0] == 0 and (start[1:n] == start[:n - 1] + rows[:n - 1]).all()
        assert rows[:n].sum() == mc and set(height[:n]) <= {fast.MR, fast.MR4}
        assert (rows[:n - 1] == height[:n - 1]).all() and 0 < rows[n - 1] <= height[n - 1]
        if mc % 4 == 0 or mc % 6 == 0:
            assert rows[n - 1] == height[n - 1], mc


@pytest.mark.parametrize("TA", [0, 1])
def test_every_row_remainder(TA):
    """M = 1..14 walks every panel layout (a 6-row tail of 5, 4-row tails of 1..4, two 4s)."""
    rng = np.random.default_rng([12, TA])
    for M in range(1, 15):
        A, lda, B, ldb, C, ldc = operands(rng, TA, 0, M, 21, 19, make=wild)
        got, want = run_both(TA, 0, M, 21, 19, -0.75, A, lda, B, ldb, 1.0, C, ldc)
        assert_bitwise(got, want)


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_default_nan_inputs_bitwise(TA, TB):
    """NaNs as darknet's own arithmetic makes them (all the x86 default NaN) keep their bits."""
    rng = np.random.default_rng([13, TA, TB])
    for M, N, K in ((5, 9, 7), (17, 33, 300)):
        A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, make=lambda r, n: wild(r, n, nan=True))
        got, want = run_both(TA, TB, M, N, K, -1.3, A, lda, B, ldb, 0.7, C, ldc)
        assert np.isnan(want).any()
        assert_bitwise(got, want)


#: NaNs of assorted payloads, quiet and signalling, both signs.
NAN_PAYLOADS = np.array([0x7FC00000, 0x7FC00001, 0x7FC12345, 0xFFC00000, 0xFF800001, 0x7F800002,
                         0xFFC0ABCD], np.uint32)


def nan_storm(rng, n, frac=0.01):
    x = wild(rng, n)
    hit = rng.random(n) < frac
    x.view(np.uint32)[hit] = rng.choice(NAN_PAYLOADS, hit.sum())
    return x


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_foreign_nan_inputs_bitwise(TA, TB):
    """NaNs of other payloads (numpy's +NaN, signalling NaNs) meeting one another and the
    default NaN: which one survives an operation is part of the bits.  Sizes span several
    K chunks, so NaN panels (computed element by element) sit beside vector panels."""
    rng = np.random.default_rng([17, TA, TB])
    for M, N, K, frac in ((9, 21, 40, 0.01), (70, 40, 300, 0.0005), (6, 530, 20, 0.001)):
        A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, pad_c=2,
                                          make=lambda r, n: nan_storm(r, n, frac))
        got, want = run_both(TA, TB, M, N, K, -1.3, A, lda, B, ldb, 0.7, C, ldc)
        assert np.isnan(want).any()
        assert_bitwise(got, want)


def _nan(bits):
    return np.array([bits], np.uint32).view(np.float32)[0]


NA, NB, NC = 0x7FC00001, 0x7FC00002, 0x7FC00003


@pytest.mark.parametrize("module", [ref, fast])
@pytest.mark.parametrize("TB", [0, 1])
def test_nan_operand_order_is_gccs(module, TB):
    """Which NaN survives, as in darknet's gemm.c compiled by gcc 12.2 -O2 -ffp-contract=off
    (read from its objdump; x86 keeps the first source operand's NaN):
    gemm_nn ``(B*A_PART) + C``, gemm_nt ``sum + (A_PART*B)`` and ``sum + C``."""
    one = np.float32(1)

    def run(A, B, C, K):
        out = np.array(C, np.float32)
        module.gemm(0, TB, 1, 1, K, one, np.array(A, np.float32), K, np.array(B, np.float32),
                    K if TB else 1, one, out, 1)
        return int(out.view(np.uint32)[0])

    # both factors NaN: nn keeps B's, nt keeps A_PART's
    assert run([_nan(NA)], [_nan(NB)], [1], 1) == (NA if TB else NB)
    # running value NaN (k = 0) meets a NaN product (k = 1): nn keeps the product's,
    # nt keeps the running sum's
    assert run([1, _nan(NA)], [_nan(NB), 1], [1], 2) == (NB if TB else NA)
    # C NaN meets a NaN product / sum: the product (nn) or the sum (nt) wins
    assert run([_nan(NA)], [1], [_nan(NC)], 1) == NA


@pytest.mark.parametrize("name", ["gemm_nn", "gemm_nt", "gemm_tn", "gemm_tt"])
def test_variants_without_beta(name):
    """The four variants called directly add into C with no BETA step (C holds -0 and inf)."""
    TA, TB = int(name[5] == "t"), int(name[6] == "t")
    rng = np.random.default_rng(list(map(ord, name)))
    M, N, K = 11, 37, 70
    for make in (plain, wild):
        A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, pad_c=4, make=make)
        want, got = C.copy(), C.copy()
        getattr(ref, name)(M, N, K, np.float32(0.5), A, lda, B, ldb, want, ldc)
        getattr(fast, name)(M, N, K, np.float32(0.5), A, lda, B, ldb, got, ldc)
        assert_bitwise(got, want)


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_empty_and_k_zero(TA, TB):
    """K == 0: gemm_cpu still scales C by BETA (0*inf = NaN), and gemm_nt/tt still add their
    +0 ``sum`` (turning -0 into +0); M == 0 or N == 0 touch nothing."""
    C = np.array([np.inf, -0.0, 2.5, -np.inf, 1e-41, -3.0], np.float32)
    A = np.zeros(8, np.float32)
    for BETA in (0.0, 1.0, -0.7):
        got, want = run_both(TA, TB, 2, 3, 0, 1.0, A, 4, A, 4, BETA, C, 3)
        assert_bitwise(got, want)
    if TB:
        got, want = run_both(TA, TB, 2, 3, 0, 1.0, A, 4, A, 4, 1.0, C, 3)
        assert bits(got)[1] == 0  # -0 * 1 + (+0) = +0
    for M, N in ((0, 3), (2, 0)):
        got, want = run_both(TA, TB, M, N, 4, 1.0, A, 4, A, 4, 0.0, C, 3)
        assert_bitwise(got, C)
        assert_bitwise(want, C)


def test_python_float_scalars_are_c_floats():
    """ALPHA and BETA are C ``float`` parameters: 0.7 (a double) is rounded to float32 first."""
    rng = np.random.default_rng(3)
    A, lda, B, ldb, C, ldc = operands(rng, 0, 0, 5, 20, 9)
    for module in (ref, fast):
        x, y = C.copy(), C.copy()
        module.gemm(0, 0, 5, 20, 9, -1.3, A, lda, B, ldb, 0.7, x, ldc)
        module.gemm(0, 0, 5, 20, 9, np.float32(-1.3), A, lda, B, ldb, np.float32(0.7), y, ldc)
        assert_bitwise(x, y)


@pytest.mark.parametrize("TA,TB", VARIANTS)
def test_reference_against_float64_product(TA, TB):
    """The maths: C = ALPHA*op(A)*op(B) + BETA*C within float32 rounding of a float64 product."""
    rng = np.random.default_rng([19, TA, TB])
    M, N, K = 13, 29, 150
    A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K, pad_a=2, pad_b=3, pad_c=1, off=2)
    ALPHA, BETA = np.float32(-1.3), np.float32(0.7)
    a = np.lib.stride_tricks.as_strided(A, ((K, M) if TA else (M, K)), (lda * 4, 4)).astype(np.float64)
    b = np.lib.stride_tricks.as_strided(B, ((N, K) if TB else (K, N)), (ldb * 4, 4)).astype(np.float64)
    a, b = (a.T if TA else a), (b.T if TB else b)
    c = np.lib.stride_tricks.as_strided(C, (M, N), (ldc * 4, 4)).astype(np.float64)
    exact = float(ALPHA) * (a @ b) + float(BETA) * c
    scale = abs(float(ALPHA)) * (np.abs(a) @ np.abs(b)) + abs(float(BETA)) * np.abs(c)
    for module in (ref, fast):
        out = C.copy()
        module.gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, out, ldc)
        got = np.lib.stride_tricks.as_strided(out, (M, N), (ldc * 4, 4)).astype(np.float64)
        # each element carries at most ~K+3 float32 roundings of terms bounded by `scale`
        assert (np.abs(got - exact) <= (K + 3) * 2.0 ** -24 * scale).all()
        assert np.abs(got - exact).max() > 0  # float32 arithmetic, not a float64 product
    # and the bound is not vacuous: a wrong transposition fails it
    wrong = float(ALPHA) * (a @ b)[::-1] + float(BETA) * c
    assert not (np.abs(wrong - exact) <= (K + 3) * 2.0 ** -24 * scale).all()


def test_large_shapes_match_reference():
    """Shapes big enough for the threaded path (several blocks of C) and several K chunks:
    gemm_nn/tn split along N (N >= M) and along M."""
    import numba
    rng = np.random.default_rng(23)
    assert fast.PARALLEL_WORK <= 1 << 20  # the shapes below must take the threaded path
    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    for TA, TB, M, N, K in ((0, 0, 32, 700, 300), (0, 1, 70, 600, 40), (1, 0, 144, 300, 40),
                            (1, 1, 70, 530, 30), (0, 1, 40, 144, 676), (0, 0, 300, 70, 260),
                            (1, 0, 250, 45, 300)):
        A, lda, B, ldb, C, ldc = operands(rng, TA, TB, M, N, K)
        try:
            got, want = run_both(TA, TB, M, N, K, 1.0, A, lda, B, ldb, 1.0, C, ldc)
        finally:
            numba.set_num_threads(saved)
        assert_bitwise(got, want)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(saved)


@pytest.mark.parametrize("bad", ["short_A", "short_B", "short_C", "ldc", "dtype", "ndim", "negative"])
@pytest.mark.parametrize("module", [ref, fast])
def test_bad_arguments_raise(module, bad):
    M, N, K = 4, 5, 6
    A, B, C = np.zeros(M * K, np.float32), np.zeros(K * N, np.float32), np.zeros(M * N, np.float32)
    kw = dict(TA=0, TB=0, M=M, N=N, K=K, ALPHA=1.0, A=A, lda=K, B=B, ldb=N, BETA=1.0, C=C, ldc=N)
    if bad == "short_A":
        kw["A"] = A[1:]
    elif bad == "short_B":
        kw["ldb"] = N + 1
    elif bad == "short_C":
        kw["C"] = C[:-1]
    elif bad == "ldc":
        kw["ldc"] = N - 1
    elif bad == "dtype":
        kw["B"] = B.astype(np.float64)
    elif bad == "ndim":
        kw["C"] = C.reshape(M, N)
    else:
        kw["K"] = -1
    with pytest.raises(DarkpyError, match="gemm"):
        module.gemm(**kw)


def test_fast_rejects_strided_views():
    A = np.zeros(40, np.float32)
    with pytest.raises(DarkpyError, match="contiguous"):
        fast.gemm(0, 0, 2, 2, 2, 1.0, A[::2], 2, A[:4], 2, 1.0, np.zeros(4, np.float32), 2)


def _asm(fn, *args):
    """x86 assembly of a fresh (uncached) compilation of ``fn`` with its callees inlined."""
    fresh = njit(error_model="numpy")(fn.py_func)
    fresh(*args)
    return fresh.inspect_asm(fresh.signatures[0])


def test_no_fused_multiply_add_in_generated_code():
    """The CPU has FMA (lscpu: fma); LLVM must not have contracted a multiply and an add."""
    A, B, C = np.zeros(64, np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    # gemm_nn/tn: the whole block driver, with both micro-kernels and the packing inlined
    asm = _asm(fast._accumulate_block, 0, 0, 4, 0, 4, 4, np.float32(1), A, 4, B, 4, True, False,
               np.float32(1), C, 4, False, 0, 0, 0, 0, 0, 1)
    assert asm.count("vmulps") >= 20 and asm.count("vaddps") >= 20  # really the vector micro-kernels
    assert "fmadd" not in asm and "fmsub" not in asm and "fnmadd" not in asm
    Ap, Bp, T = np.zeros(4 * 8, np.float32), np.zeros(8 * 16, np.float32), np.zeros(64, np.float32)
    asm = _asm(fast._tile_sum, 8, Ap, 0, Bp, T, 0, 16)
    assert "vmulps" in asm and "vaddps" in asm
    assert "fmadd" not in asm and "fmsub" not in asm and "fnmadd" not in asm
    # gemm_nt/tt's tasks, the image packer of gemm_nt_im2col compiled in (a runtime flag)
    asm = _asm(fast._sum_tasks, 0, 1, 1, 0, 4, 4, 4, np.float32(1), A, 4, B, 4, True, np.float32(1), C, 4,
               False, 0, 0, 0, 0, 0, 1)
    assert "fmadd" not in asm and "fmsub" not in asm
    for name in ("gemm_nn", "gemm_nt"):
        asm = _asm(getattr(ref, name), 4, 4, 4, np.float32(1), A, 4, B, 4, C, 4)
        assert "mulss" in asm and "fmadd" not in asm


def test_micro_kernel_loop_keeps_its_accumulators_in_registers():
    """The 6 x 16 loop (12 accumulators, 2 B vectors, 1 broadcast) is not unrolled into
    stack spills: its loop body touches no stack slot."""
    import re
    A, B, C = np.zeros(64, np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    asm = _asm(fast._accumulate_block, 0, 0, 4, 0, 4, 4, np.float32(1), A, 4, B, 4, True, False,
               np.float32(1), C, 4, False, 0, 0, 0, 0, 0, 1)
    blocks = re.split(r"\n(?=\.LBB)", asm)
    loops = [b for b in blocks if b.count("vmulps") == 12 and b.count("vaddps") == 12
             and b.count("vbroadcastss") == 6]
    assert loops, "no 6 x 16 micro-kernel loop found"
    for body in loops:
        assert "rsp" not in body and "rbp)" not in body


# ---------------------------------------------------------------- golden dumps of darknet

def _conv_cases():
    from conftest import golden_cases
    return golden_cases("conv-")


def _load(case_dir):
    import json
    case = json.loads((case_dir / "case.json").read_text())
    tensors = {t["name"]: np.fromfile(case_dir / t["file"], "<f4") for t in case["tensors"]}
    return case["params"], tensors


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
@pytest.mark.parametrize("case", _conv_cases())
def test_golden_convolution_gemms(case, module):
    """The three gemm calls of darknet's convolutional layer, replayed on a golden dump:
    forward ``gemm(0,0)`` (= ``x``, the output before batchnorm), ``weight_updates``
    ``gemm(0,1)`` and the delta for the previous layer ``gemm(1,0, BETA=0)`` (+ col2im)."""
    from conftest import GOLDEN
    from darkpy.kernels.reference.im2col import col2im_cpu, im2col_cpu
    p, t = _load(GOLDEN / case)
    batch, c, h, w, size, stride, pad, groups = (p[k] for k in
                                                 ("batch", "c", "h", "w", "size", "stride", "padding", "groups"))
    filters, out_h, out_w = p["filters"], p["out_h"], p["out_w"]
    m, n_out, k_in = filters // groups, out_h * out_w, size * size * c // groups
    nweights = filters * c // groups * size * size
    workspace = np.zeros(k_in * n_out, np.float32)

    def image(buf, i, j):
        return buf[(i * groups + j) * c // groups * h * w:]

    def columns(i, j):
        if size == 1:
            return image(t["input"], i, j)
        im2col_cpu(image(t["input"], i, j), c // groups, h, w, size, stride, pad, workspace)
        return workspace

    if "x" in t:  # forward: output filled with 0, then gemm(0,0,m,n,k,1,a,k,b,n,1,c,n)
        out = np.zeros(batch * filters * n_out, np.float32)
        for i in range(batch):
            for j in range(groups):
                module.gemm(0, 0, m, n_out, k_in, 1, t["weights_before"][j * nweights // groups:], k_in,
                            columns(i, j), n_out, 1, out[(i * groups + j) * n_out * m:], n_out)
        assert_bitwise(out, t["x"])

    # backward: weight_updates += delta * columns^T, gemm(0,1,m,n,k,1,a,k,b,k,1,c,n)
    wu = t["weight_updates_before"].copy()
    for i in range(batch):
        for j in range(groups):
            module.gemm(0, 1, m, k_in, n_out, 1, t["delta"][(i * groups + j) * m * n_out:], n_out,
                        columns(i, j), n_out, 1, wu[j * nweights // groups:], k_in)
    assert_bitwise(wu, t["weight_updates"])

    # backward: net.delta (im2col layout, then col2im) = W^T * delta, gemm(1,0,n,k,m,1,a,n,b,k,0,c,k)
    net_delta = t["net_delta_before"].copy()
    for i in range(batch):
        for j in range(groups):
            imd = image(net_delta, i, j)
            out = imd if size == 1 else workspace
            module.gemm(1, 0, k_in, n_out, m, 1, t["weights_before"][j * nweights // groups:], k_in,
                        t["delta"][(i * groups + j) * m * n_out:], n_out, 0, out, n_out)
            if size != 1:
                col2im_cpu(workspace, c // groups, h, w, size, stride, pad, imd)
    assert_bitwise(net_delta, t["net_delta"])


# ---------------------------------------------------------------- the CUDA twin (simulator)

_CUDA_SIM_CHECK = r"""
import numpy as np
from darkpy.kernels import gemm_cuda
from darkpy.kernels.reference import gemm as R
rng = np.random.default_rng(3)
payloads = np.array([0x7FC00000, 0x7FC00001, 0x7FC12345, 0xFFC00000, 0xFF800001, 0x7F800002], np.uint32)
def storm(n):
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-20, 20, n)).astype(np.float32)
    u = rng.random(n)
    x[u < 0.05] = np.inf
    x[(u >= 0.05) & (u < 0.1)] = 0.0
    hit = rng.random(n) < 0.08
    x.view(np.uint32)[hit] = rng.choice(payloads, hit.sum())
    return x
for TA in (0, 1):
    for TB in (0, 1):
        M, N, K = 3, 5, 7
        A, B, C = storm(M * K), storm(K * N), storm(M * N)
        lda, ldb = (M if TA else K), (K if TB else N)
        want, got = C.copy(), C.copy()
        R.gemm(TA, TB, M, N, K, -1.3, A, lda, B, ldb, 0.7, want, N)
        gemm_cuda.gemm_gpu(TA, TB, M, N, K, -1.3, A, lda, B, ldb, 0.7, got, N)
        assert np.isnan(want).any()
        assert (want.view(np.uint32) == got.view(np.uint32)).all(), (TA, TB)
print("ok")
"""


def test_cuda_twin_matches_reference_in_simulator():
    """gemm_cuda (one thread per C element) against the reference, NaN payloads included,
    in Numba's CUDA simulator (a fresh process: the simulator must be chosen before
    numba.cuda is first imported)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _CUDA_SIM_CHECK], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 and "No module named" in proc.stderr and "cuda" in proc.stderr:
        pytest.skip("numba.cuda is not importable")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ---------------------------------------------------------------- gemm_im2col (fused im2col + gemm_nn)

def _im2col_operands(rng, channels, height, width, ksize, stride, pad, M, make=plain, off=0, pad_a=0, pad_c=0):
    out_h, out_w = ref_out_size(height, ksize, stride, pad), ref_out_size(width, ksize, stride, pad)
    N, K = out_h * out_w, channels * ksize * ksize
    im = make(rng, off + channels * height * width + 3)[off:]
    lda, ldc = K + pad_a, N + pad_c
    A = make(rng, off + M * lda + 2)[off:]
    C = make(rng, off + M * ldc + 1)[off:]
    return im, N, K, A, lda, C, ldc


def ref_out_size(size, ksize, stride, pad):
    from darkpy.kernels.reference.im2col import out_size
    return out_size(size, ksize, stride, pad)


def run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K, ALPHA, A, lda, BETA, C, ldc,
                    c_zero=False):
    want, got = C.copy(), C.copy()
    ref.gemm_im2col(im, channels, height, width, ksize, stride, pad, M, N, K, ALPHA, A, lda, BETA, want, ldc,
                    c_zero=c_zero)
    fast.gemm_im2col(im, channels, height, width, ksize, stride, pad, M, N, K, ALPHA, A, lda, BETA, got, ldc,
                     c_zero=c_zero)
    return got, want


#: (channels, height, width, ksize, stride, pad, M): ksize 1/2/3/5, stride 1/2/3, pad 0/1/2,
#: output rows shorter and longer than a 16-column strip, K above one chunk (30*9 > KC).
GEOMETRIES = [(3, 7, 5, 3, 1, 1, 5), (2, 9, 7, 3, 2, 1, 7), (4, 6, 6, 1, 1, 0, 16), (2, 8, 8, 5, 3, 2, 6),
              (3, 20, 37, 3, 1, 1, 18), (3, 13, 13, 3, 1, 1, 32), (2, 40, 40, 3, 1, 1, 4),
              (30, 9, 11, 3, 1, 1, 13), (1, 4, 4, 4, 4, 0, 3), (3, 5, 9, 2, 2, 1, 9), (2, 17, 35, 3, 2, 0, 10),
              (5, 19, 3, 5, 1, 2, 11), (2, 2, 2, 3, 2, 0, 4)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gemm_im2col_equals_im2col_then_gemm(geometry):
    """The fused kernel against darknet's sequence (im2col_cpu into a buffer, then gemm),
    bitwise, on plain data and on data with +-inf, -0 and denormals, with and without c_zero."""
    channels, height, width, ksize, stride, pad, M = geometry
    rng = np.random.default_rng(list(geometry))
    for make in (plain, wild):
        for ALPHA, BETA in ((1.0, 1.0), (-1.3, 0.7), (0.5, 0.0)):
            for c_zero in (False, True):
                im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M,
                                                            make=make)
                got, want = run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K,
                                            ALPHA, A, lda, BETA, C, ldc, c_zero=c_zero)
                assert_bitwise(got, want)


def test_gemm_im2col_takes_darknets_column_matrix():
    """The reference twin is im2col_cpu + gemm, and im2col_cpu is checked against the definition
    in test_im2col; here the fused result equals a float64-free check: with one-hot weights,
    C's rows are the column matrix rows themselves."""
    from test_im2col import naive_im2col
    rng = np.random.default_rng(5)
    channels, height, width, ksize, stride, pad = 2, 9, 7, 3, 2, 1
    out_h, out_w = ref_out_size(height, ksize, stride, pad), ref_out_size(width, ksize, stride, pad)
    N, K = out_h * out_w, channels * ksize * ksize
    im = rng.standard_normal(channels * height * width).astype(np.float32)
    A = np.eye(K, dtype=np.float32).ravel()  # M = K, row i picks column-matrix row i
    C = np.full(K * N, np.nan, np.float32)
    fast.gemm_im2col(im, channels, height, width, ksize, stride, pad, K, N, K, 1.0, A, K, 1.0, C, N, c_zero=True)
    assert_bitwise(C, naive_im2col(im, channels, height, width, ksize, stride, pad))


def test_gemm_im2col_c_zero_ignores_c_and_writes_every_element():
    """c_zero: C's block is taken to hold fill_cpu's +0 -- whatever it holds (NaN, inf, -0) --
    and every element of the block is written; floats between rows and past it stay."""
    rng = np.random.default_rng(6)
    for geometry in GEOMETRIES:
        channels, height, width, ksize, stride, pad, M = geometry
        for BETA in (1.0, -1.0, 0.0, np.inf):  # (+0)*-1 = -0, (+0)*inf = NaN: both as darknet
            im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M,
                                                        pad_c=5)
            C[:] = np.nan
            before = C.copy()
            got, want = run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K, 1.0, A, lda,
                                        BETA, C, ldc, c_zero=True)
            assert_bitwise(got, want)
            block = np.zeros(C.size, bool)
            for i in range(M):
                block[i * ldc:i * ldc + N] = True
            assert_bitwise(got[~block], before[~block])
            if BETA != np.inf:  # finite data: every element written, none left as the NaN it held
                assert np.isfinite(got[block]).all()


@pytest.mark.parametrize("where", ["im", "A", "C", "nowhere"])
def test_gemm_im2col_nan_inputs_bitwise(where):
    """NaNs in the image, the weights or C keep darknet's bits: the default NaN everywhere
    (the vector path), plus foreign payloads in one operand (those tiles go element by
    element in gcc's order)."""
    rng = np.random.default_rng([8, ord(where[0])])
    foreign = np.array([0x7FC01234, 0xFFA00001], np.uint32).view(np.float32)
    for channels, height, width, ksize, stride, pad, M in GEOMETRIES[:8]:
        im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M,
                                                    make=lambda r, n: wild(r, n, nan=True))
        if where != "nowhere":
            buf = {"im": im, "A": A, "C": C}[where]
            buf[rng.integers(0, buf.size, 3)] = np.concatenate([foreign, foreign[:1]])
        for c_zero in (False, True):
            got, want = run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K, -1.3, A, lda,
                                        0.7, C, ldc, c_zero=c_zero)
            assert_bitwise(got, want)


def test_gemm_im2col_views_and_leading_dimensions():
    """im, A and C as views at an offset with longer rows (darknet's pointer arithmetic)."""
    rng = np.random.default_rng(9)
    for channels, height, width, ksize, stride, pad, M in GEOMETRIES[:6]:
        im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M,
                                                    off=7, pad_a=3, pad_c=11)
        before = C.copy()
        got, want = run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K, 1.0, A, lda,
                                    1.0, C, ldc)
        assert_bitwise(got, want)
        untouched = np.ones(C.size, bool)
        for i in range(M):
            untouched[i * ldc:i * ldc + N] = False
        assert_bitwise(got[untouched], before[untouched])


def test_gemm_im2col_threaded_shapes():
    """Big enough for the threads: split along N (a long image) and along M (many filters)."""
    import numba
    rng = np.random.default_rng(10)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for geometry in ((16, 30, 33, 3, 1, 1, 20), (16, 10, 10, 3, 1, 1, 300), (40, 13, 13, 3, 1, 1, 100)):
            channels, height, width, ksize, stride, pad, M = geometry
            im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M)
            assert M * N * K >= fast.PARALLEL_WORK
            for c_zero in (False, True):
                got, want = run_im2col_both(im, channels, height, width, ksize, stride, pad, M, N, K, 1.0, A, lda,
                                            1.0, C, ldc, c_zero=c_zero)
                assert_bitwise(got, want)
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_gemm_im2col_bad_arguments_raise(module):
    rng = np.random.default_rng(11)
    channels, height, width, ksize, stride, pad, M = 3, 7, 5, 3, 1, 1, 5
    im, N, K, A, lda, C, ldc = _im2col_operands(rng, channels, height, width, ksize, stride, pad, M)
    good = dict(im=im, channels=channels, height=height, width=width, ksize=ksize, stride=stride, pad=pad,
                M=M, N=N, K=K, ALPHA=1.0, A=A, lda=lda, BETA=1.0, C=C, ldc=ldc)
    for change, word in ((dict(K=K + 1), "column matrix"), (dict(N=N - 1), "column matrix"),
                         (dict(im=im[:channels * height * width - 1]), "im holds"),
                         (dict(A=A[:M * K - 1]), "A holds"), (dict(C=C[:M * N - 1]), "C holds"),
                         (dict(lda=K - 1), "lda"), (dict(ldc=N - 1), "ldc"), (dict(ksize=9), "does not fit"),
                         (dict(stride=0), "bad sizes"), (dict(im=im.astype(np.float64)), "float32"),
                         (dict(M=-1), "negative")):
        with pytest.raises(DarkpyError, match=word):
            module.gemm_im2col(**{**good, **change})


def test_gemm_im2col_no_fused_multiply_add():
    """The fused entry compiles the same driver with the image packer: no FMA anywhere."""
    A, C, im = np.zeros(64, np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    asm = _asm(fast._accumulate_block, 0, 0, 4, 0, 4, 9, np.float32(1), A, 9, im, 4, True, True,
               np.float32(1), C, 4, True, 4, 4, 3, 1, 1, 4)
    assert "vmulps" in asm and "fmadd" not in asm and "fmsub" not in asm and "fnmadd" not in asm


@njit
def _is_foreign_nan(x):
    return fast.is_foreign_nan(x)


def test_only_foreign_nans_leave_the_vector_path():
    """The default NaN (what x86 arithmetic makes) cannot change bits through operand order,
    so only other NaN bit patterns send a tile element by element: the packers and the
    micro-kernel flag those and nothing else."""
    default = X86_DEFAULT_NAN
    foreign = np.array([0x7FC00000, 0xFFC00001, 0x7F800001], np.uint32).view(np.float32)
    for x, flagged in [(np.float32(1), False), (np.float32(np.inf), False), (default, False)] + \
            [(f, True) for f in foreign]:
        assert _is_foreign_nan(x) == flagged
        A = np.full(6 * 16, 1, np.float32)
        A[5] = x
        Ap = np.zeros(6 * 16 + 8, np.float32)
        assert fast._pack_A_panel(0, np.float32(1), A, 16, 0, 6, 6, 0, 16, Ap, 0) == flagged
        B = np.ones(16 * 40, np.float32)
        B[3 * 40 + 17] = x
        Bp, row = np.zeros(16 * 48, np.float32), np.zeros(48, np.float32)
        assert fast._pack_B_chunk(False, B, 40, 0, 0, 0, 0, 0, 1, 0, 16, 0, 40, Bp, 0, row) == flagged
        T = np.ones(6 * 16, np.float32)
        T[37] = x
        done = fast._tile(6, fast.START_LOAD, 16, Ap, 0, Bp, 0, T, 0, 16, np.float32(0), np.float32(1))
        assert done == (not flagged)


# ---------------------------------------------------------------- gemm_nt_im2col (fused im2col + gemm_nt)

def _nt_operands(rng, channels, height, width, ksize, stride, pad, M, make=plain, off=0, pad_a=0, pad_c=0):
    """A = the layer's delta (M x K, K = out_h*out_w), C = weight_updates (M x N, N = c*ksize^2)."""
    out_h, out_w = ref_out_size(height, ksize, stride, pad), ref_out_size(width, ksize, stride, pad)
    K, N = out_h * out_w, channels * ksize * ksize
    im = make(rng, off + channels * height * width + 3)[off:]
    lda, ldc = K + pad_a, N + pad_c
    A = make(rng, off + M * lda + 2)[off:]
    C = make(rng, off + M * ldc + 1)[off:]
    return im, N, K, A, lda, C, ldc


def run_nt_both(M, N, K, ALPHA, A, lda, im, geometry, BETA, C, ldc):
    want, got = C.copy(), C.copy()
    ref.gemm_nt_im2col(M, N, K, ALPHA, A, lda, im, *geometry, BETA, want, ldc)
    fast.gemm_nt_im2col(M, N, K, ALPHA, A, lda, im, *geometry, BETA, got, ldc)
    return got, want


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gemm_nt_im2col_equals_im2col_then_gemm_nt(geometry):
    """The weight-update gemm(0,1) with B built from the image, against im2col_cpu + gemm,
    bitwise, plain and wild data (NaN included: the default NaN and a foreign one)."""
    channels, height, width, ksize, stride, pad, M = geometry
    rng = np.random.default_rng([21, *geometry])
    foreign = np.array([0x7FC01234], np.uint32).view(np.float32)
    for make in (plain, wild, lambda r, n: wild(r, n, nan=True)):
        for ALPHA, BETA in ((1.0, 1.0), (-1.3, 0.7)):
            im, N, K, A, lda, C, ldc = _nt_operands(rng, channels, height, width, ksize, stride, pad, M, make=make)
            if make is not plain and make is not wild:
                im[rng.integers(0, im.size)] = foreign[0]
            got, want = run_nt_both(M, N, K, ALPHA, A, lda, im, geometry[:6], BETA, C, ldc)
            assert_bitwise(got, want)


def test_gemm_nt_im2col_views_threads_and_errors():
    """Views with longer rows (floats between rows untouched), a shape big enough for the
    threaded path, and the argument checks of both twins."""
    import numba
    rng = np.random.default_rng(22)
    for geometry in GEOMETRIES[:5]:
        im, N, K, A, lda, C, ldc = _nt_operands(rng, *geometry, off=5, pad_a=3, pad_c=7)
        before = C.copy()
        M = geometry[-1]
        got, want = run_nt_both(M, N, K, 1.0, A, lda, im, geometry[:6], 1.0, C, ldc)
        assert_bitwise(got, want)
        untouched = np.ones(C.size, bool)
        for i in range(M):
            untouched[i * ldc:i * ldc + N] = False
        assert_bitwise(got[untouched], before[untouched])
    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        geometry = (16, 30, 33, 3, 1, 1, 70)
        im, N, K, A, lda, C, ldc = _nt_operands(rng, *geometry)
        assert 70 * N * K >= fast.PARALLEL_WORK and 70 > fast.SUM_MC  # several tasks
        got, want = run_nt_both(70, N, K, 1.0, A, lda, im, geometry[:6], 1.0, C, ldc)
        assert_bitwise(got, want)
    finally:
        numba.set_num_threads(saved)
    im, N, K, A, lda, C, ldc = _nt_operands(rng, 3, 7, 5, 3, 1, 1, 5)
    for module in (ref, fast):
        for args, word in (((5, N + 1, K), "column matrix"), ((5, N, K - 1), "column matrix"),
                           ((9, N, K), "A holds"), ((-1, N, K), "negative")):
            with pytest.raises(DarkpyError, match=word):
                module.gemm_nt_im2col(*args, 1.0, A, lda, im, 3, 7, 5, 3, 1, 1, 1.0, C, ldc)
        with pytest.raises(DarkpyError, match="ldc"):
            module.gemm_nt_im2col(5, N, K, 1.0, A, lda, im, 3, 7, 5, 3, 1, 1, 1.0, C, N - 1)
