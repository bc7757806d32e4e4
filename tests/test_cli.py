"""The `darkpy` command: exit codes, error messages, check/compare tables, dumps that re-check."""

import shutil

import numpy as np
import pytest

from conftest import GOLDEN
from darkpy.cli import main


def test_check_passes_on_a_golden_case(capsys):
    assert main(["check", str(GOLDEN / "bn-b3c5h7w3")]) == 0
    out = capsys.readouterr().out
    assert "identical" in out and "PASS" in out and "x_norm" in out


def test_check_fails_with_exit_1_and_names_the_tensor(tmp_path, capsys):
    case = tmp_path / "case"
    shutil.copytree(GOLDEN / "bn-b3c5h7w3", case)
    data = np.fromfile(case / "mean.f32", "<u4")
    data[0] ^= 4
    data.tofile(case / "mean.f32")
    assert main(["check", str(case)]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("mean "))
    assert "DIFFERS 1/5" in line and "[0]" in line


def test_check_on_unreadable_case_exits_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from darkpy.errors import DumpError
    with pytest.raises(DumpError):
        main(["check", "--debug", str(tmp_path / "nowhere")])


def test_reference_kernels_switch(capsys, monkeypatch):
    """--kernels reference selects the reference kernels for the command, and the caller's
    selection is back afterwards."""
    from darkpy import kernels
    import darkpy.layers.batchnorm as bn
    seen = []
    real = bn.forward
    monkeypatch.setattr(bn, "forward", lambda l, net: seen.append(kernels.active()) or real(l, net))
    assert main(["check", "--kernels", "reference", "-q", str(GOLDEN / "bn-b1c3h1w2")]) == 0
    assert seen and set(seen) == {"reference"}
    assert kernels.active() == "fast"


def test_compare_two_dirs(capsys):
    assert main(["compare", str(GOLDEN / "bn-b3c5h7w3"), str(GOLDEN / "bn-b3c5h7w3")]) == 0
    assert "SAME" in capsys.readouterr().out


def test_backward_dump_rechecks_bitwise_with_both_kernel_sets(tmp_path, capsys):
    from darkpy import kernels
    cfg = GOLDEN / "net-yolo-mini" / "network.cfg"
    dump = tmp_path / "dump"
    assert main(["backward", str(cfg), "--update", "--dump", str(dump), "--seed", "3"]) == 0
    assert "cost:" in capsys.readouterr().out
    assert main(["check", "-q", str(dump)]) == 0
    assert main(["check", "-q", "--kernels", "reference", str(dump)]) == 0
    assert kernels.active() == "fast"
    assert main(["backward", str(cfg), "--dump", str(dump)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_forward_rejects_an_input_of_the_wrong_size(tmp_path, capsys):
    raw = tmp_path / "in.f32"
    np.zeros(7, np.float32).tofile(raw)
    assert main(["forward", str(GOLDEN / "net-yolo-mini" / "network.cfg"), "--input", str(raw)]) == 2
    err = capsys.readouterr().err
    assert "in.f32" in err and "7 float32 values" in err and "6144" in err


def test_check_on_cuda_without_a_gpu_exits_2(capsys, monkeypatch):
    import darkpy.cuda
    from darkpy.errors import DeviceError

    def no_gpu():
        raise DeviceError("no CUDA GPU/driver: test")
    monkeypatch.setattr(darkpy.cuda, "require", no_gpu)
    assert main(["check", "--device", "cuda", str(GOLDEN / "bn-b1c3h1w2")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["check", "--profile", "darknet-gpu", str(GOLDEN / "bn-b1c3h1w2")]) == 2
