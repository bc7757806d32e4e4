"""`darkpy info` reproduces the layer table darknet prints, row for row, for darknet's own cfgs."""

import re

import pytest

from conftest import DATA, SHARED, shared_path
from darkpy.description import load
from darkpy.info import network_table
from darkpy.network import build_network

INFO = DATA / "darknet_info"
CFGS = sorted(p.stem for p in INFO.glob("*.txt"))
ROW = re.compile(r"^(layer     filters|\s*\d+ )")


def darknet_rows(name):
    """darknet's table rows (its 'Using default' chatter removed)."""
    return [line for line in (INFO / f"{name}.txt").read_text().splitlines() if ROW.match(line)]


@pytest.mark.parametrize("name", CFGS)
def test_info_matches_darknet(name):
    cfg = shared_path("cfg", f"{name}.cfg")
    net = build_network(load(cfg), batch=1)  # the table does not depend on batch
    ours = network_table(net).splitlines()
    assert ours[-1].startswith("Total BFLOPs")
    assert ours[:-1] == darknet_rows(name)


def test_total_bflops_is_the_sum_of_darknets_rows():
    cfg = shared_path("cfg", "yolov3-tiny.cfg")
    net = build_network(load(cfg), batch=1)
    total = float(network_table(net).splitlines()[-1].split()[-1])
    rows = [float(m.group(1)) for m in map(re.compile(r"([\d.]+) BFLOPs").search, darknet_rows("yolov3-tiny")) if m]
    assert abs(total - sum(rows)) < 0.01
    assert len(rows) == 13
