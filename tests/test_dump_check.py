"""The dump format, bitwise comparison, and `check` on the golden cases."""

import json
import shutil

import numpy as np
import pytest

from conftest import GOLDEN, SHARED, golden_cases
from darkpy.check import bitwise_equal, check_case, compare_cases, compare_tensor, format_table, ulp_distance
from darkpy.dump import read_case, write_case
from darkpy.errors import DumpError


def test_ulp_distance_counts_representable_floats():
    one = np.float32(1)
    nxt = np.nextafter(one, np.float32(2))
    assert ulp_distance([one], [nxt])[0] == 1
    assert ulp_distance([np.float32(-0.0)], [np.float32(0.0)])[0] == 0
    tiny = np.nextafter(np.float32(0), np.float32(1))
    assert ulp_distance([-tiny], [tiny])[0] == 2
    assert ulp_distance([np.float32("nan")], [one])[0] == -1
    assert ulp_distance([np.float32("inf")], [np.finfo(np.float32).max])[0] == 1


def test_bitwise_equal_sees_sign_of_zero_and_nan_payload():
    assert bitwise_equal(np.float32([0.0]), np.float32([0.0]))
    assert not bitwise_equal(np.float32([0.0]), np.float32([-0.0]))
    a = np.array([0x7FC00000], np.uint32).view(np.float32)
    b = np.array([0x7FC00001], np.uint32).view(np.float32)
    assert bitwise_equal(a, a.copy()) and not bitwise_equal(a, b)


def test_compare_tensor_reports_first_index_and_ulps():
    e = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = e.copy()
    a[1, 2] = np.nextafter(a[1, 2], np.float32(100))
    a[2, 0] = np.nextafter(np.nextafter(a[2, 0], np.float32(100)), np.float32(100))
    row = compare_tensor("t", e, a)
    assert not row.identical and row.differing == 2 and row.max_ulp == 2
    assert row.first_index == (1, 2)
    assert "DIFFERS 2/12" in format_table([row])


def test_write_then_read_roundtrip(tmp_path):
    x = np.arange(6, dtype=np.float32)
    write_case(tmp_path / "c", "batchnorm", {"batch": 1}, [("input", x, [1, 1, 2, 3], "given")])
    case = read_case(tmp_path / "c")
    assert case.kind == "batchnorm" and case.names() == ["input"]
    assert bitwise_equal(case["input"].ravel(), x)
    with pytest.raises(DumpError, match="exists"):
        write_case(tmp_path / "c", "batchnorm", {}, [])
    write_case(tmp_path / "c", "batchnorm", {"batch": 2}, [], force=True)
    assert read_case(tmp_path / "c").params == {"batch": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_case_is_atomic_on_failure(tmp_path):
    write_case(tmp_path / "c", "batchnorm", {"v": 1}, [("a", np.zeros(2, np.float32), [2], "given")])
    with pytest.raises(DumpError):
        write_case(tmp_path / "c", "batchnorm", {"v": 2},
                   [("a", np.zeros(2, np.float32), [2], "given"), ("b", np.zeros(3, np.float32), [2], "given")],
                   force=True)
    assert read_case(tmp_path / "c").params == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.fixture
def case_copy(tmp_path):
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN / "bn-b2c3h5w7", dst)
    return dst


@pytest.mark.parametrize("mutate, message", [
    (lambda d: (d / "case.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "case.json").unlink(), "cannot read the manifest"),
    (lambda d: (d / "output.f32").unlink(), "output.f32 is missing"),
    (lambda d: (d / "output.f32").write_bytes(b"\0" * 8), "8 bytes"),
    (lambda d: (d / "output.f32").write_bytes(b"\0" * 1680), "float64"),
    (lambda d: _edit(d, lambda m: m.update(format="other/9")), "format"),
    (lambda d: _edit(d, lambda m: m.update(kind="pooling")), "kind"),
    (lambda d: _edit(d, lambda m: m["tensors"][0].update(shape=[2, "x"])), "shape"),
    (lambda d: _edit(d, lambda m: m["tensors"][0].update(stage="later")), "stage"),
    (lambda d: _edit(d, lambda m: m["tensors"][0].update(file="../input.f32")), "plain file name"),
    (lambda d: _edit(d, lambda m: m["tensors"].append(m["tensors"][0])), "listed twice"),
])
def test_bad_dumps_raise_dump_error(case_copy, mutate, message):
    mutate(case_copy)
    with pytest.raises(DumpError, match=message):
        read_case(case_copy)


def _edit(d, fn):
    m = json.loads((d / "case.json").read_text())
    fn(m)
    (d / "case.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name", golden_cases("bn-"))
def test_batchnorm_golden_cases_bitwise(name):
    res = check_case(GOLDEN / name)
    assert res.ok, "\n" + format_table(res.rows)


def test_large_batchnorm_golden_case_bitwise():
    path = SHARED / "golden" / "strict" / "bn-b8c64h26w26"
    if not path.exists():
        pytest.skip("../shared/golden is absent")
    res = check_case(path)
    assert res.ok, "\n" + format_table(res.rows)


def test_check_notices_a_changed_bit(case_copy):
    out = case_copy / "output.f32"
    data = np.fromfile(out, "<u4")
    data[3] ^= 1
    data.tofile(out)
    res = check_case(case_copy)
    assert not res.ok
    bad = [r for r in res.rows if not r.identical]
    assert [r.name for r in bad] == ["output"] and bad[0].max_ulp == 1


def test_compare_cases_between_builds():
    ofast = SHARED / "golden" / "ofast" / "bn-b2c3h5w7"
    if not ofast.exists():
        pytest.skip("../shared/golden is absent")
    res = compare_cases(GOLDEN / "bn-b2c3h5w7", ofast)
    same = {r.name for r in res.rows if r.identical}
    assert {"output", "x_norm", "mean", "variance"} <= same
    assert not res.ok  # -Ofast reorders the backward sums
