"""The network builder and loops: darknet's shapes, learning-rate policies, golden networks end to end."""

import math
import shutil
import subprocess

import numpy as np
import pytest

from conftest import DATA, GOLDEN, golden_cases
from darkpy.check import check_case, format_table
from darkpy.description import parse_cfg_text
from darkpy.errors import CfgError
from darkpy.network import Network, build_network, get_current_rate

# get_current_rate for seen in SEENS, one column per schedule, as printed ("%a") by
# tests/data/lr_policy.c compiled with gcc -O2 -ffp-contract=off (C float fields, double libm).
SEENS = [0, 2, 6, 14, 16, 30, 64, 1000, 12345]
C_RATES = (DATA / "lr_policy.txt").read_text().split("\n")


def _net(policy, **kw):
    net = Network()
    net.batch, net.subdivisions = 2, 1
    net.policy = policy
    net.learning_rate = np.float32(kw.pop("lr", .01))
    net.power = np.float32(kw.pop("power", 4))
    for k, v in kw.items():
        setattr(net, k, v)
    return net


SCHEDULES = [
    lambda: _net("constant", lr=.001),
    lambda: _net("step", scale=np.float32(.7), step=3),
    lambda: _net("steps", steps=np.array([3, 7, 20]), scales=np.float32([.1, .5, .25]), num_steps=3),
    lambda: _net("exp", gamma=np.float32(.93)),
    lambda: _net("poly", max_batches=5000),
    lambda: _net("sigmoid", step=5, gamma=np.float32(.31)),
    lambda: _net("steps", power=2.5, burn_in=4, steps=np.array([3, 7, 20]), scales=np.float32([.1, .5, .25]),
                 num_steps=3),
]


@pytest.mark.parametrize("row", range(len(SEENS)))
def test_learning_rate_policies_match_c(row):
    fields = C_RATES[row].split()
    assert int(fields[0]) == SEENS[row]
    for col, make in enumerate(SCHEDULES):
        net = make()
        net.seen = SEENS[row]
        expected = np.float32(float.fromhex(fields[col + 1]))
        got = get_current_rate(net)
        assert got.view(np.uint32) == expected.view(np.uint32), (row, col, got, expected)


def test_c_program_still_prints_the_table(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is absent")
    exe = tmp_path / "rate"
    subprocess.run([gcc, "-O2", "-ffp-contract=off", "-o", str(exe), str(DATA / "lr_policy.c"), "-lm"], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert out.split("\n") == C_RATES


CFG = """[net]
batch=4
subdivisions=2
width=8
height=6
channels=3
{extra}
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky
"""


def test_build_threads_shapes_and_batch():
    net = build_network(parse_cfg_text(CFG.format(extra="")))
    assert net.batch == 2 and net.subdivisions == 2  # darknet: batch /= subdivisions
    l = net.layers[0]
    assert (l.out_c, l.out_h, l.out_w) == (4, 3, 4)
    assert net.input.size == 2 * 8 * 6 * 3 and net.truth.size == 2 * l.outputs
    assert net.workspace.size * 4 >= l.workspace_size


@pytest.mark.parametrize("extra, message", [
    ("policy=wavy", "policy=wavy"),
    ("policy=steps\nsteps=10,20", "steps= and scales="),
    ("subdivisions=0", "subdivisions"),
])
def test_bad_net_options(extra, message):
    text = CFG.format(extra=extra).replace("subdivisions=2\n", "") if "subdivisions" in extra else CFG.format(extra=extra)
    with pytest.raises(CfgError, match=message):
        build_network(parse_cfg_text(text))


def test_memory_limit_is_checked_before_it_is_exceeded():
    from darkpy.errors import MemoryLimitError
    with pytest.raises(MemoryLimitError, match="bytes"):
        build_network(parse_cfg_text(CFG.format(extra="")), memory_limit=100)


@pytest.mark.parametrize("name", golden_cases("net-"))
def test_golden_networks_bitwise(name):
    res = check_case(GOLDEN / name)
    assert res.ok, "\n" + format_table(res.rows)


DARKNET_DUMPS = DATA / "darknet-dumps"


@pytest.mark.parametrize("name", sorted(p.name for p in DARKNET_DUMPS.iterdir() if p.is_dir()))
def test_darknet_dumps_of_our_cfgs_bitwise(name):
    """crop+dropout (C's rand() replayed), region+reorg, detection+connected: darknet's own dumps."""
    res = check_case(DARKNET_DUMPS / name)
    assert res.ok, "\n" + format_table(res.rows)


def test_without_the_recorded_srand_training_draws_differ(tmp_path):
    import json
    case = tmp_path / "case"
    shutil.copytree(DARKNET_DUMPS / "net-dropout-crop", case)
    manifest = json.loads((case / "case.json").read_text())
    manifest["params"]["srand"] = manifest["params"]["srand"] + 1
    (case / "case.json").write_text(json.dumps(manifest))
    res = check_case(case)
    differing = {r.name for r in res.rows if not r.identical}
    assert "layer00_output" in differing and "infer_layer00_output" not in differing


def test_c_pow_overflow_keeps_cs_sign():
    """C's pow overflows to -inf for a negative base and an odd integer exponent (Python raises)."""
    from darkpy.network import _c_pow
    assert _c_pow(-2.0, 2001) == -math.inf
    assert _c_pow(-2.0, 2000) == math.inf
    assert _c_pow(2.0, 2001) == math.inf
    assert math.isnan(_c_pow(-2.0, 0.5))
