"""``python -m darkpy.cuda CASE_DIR... [--profile P] [--simulator]``: check dumps on the device.

What ``darkpy check --device cuda`` does (``darkpy.cuda.network.check_case_device``
for each case): re-run the case on the CUDA device and compare every tensor
bitwise.  Exit status: 0 when every tensor is identical, 1 when one differs, 2
when there is no device (or a case cannot be run).  ``--simulator`` selects
Numba's CUDA simulator (slow; for machines without a GPU).
"""

import argparse
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m darkpy.cuda", description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", metavar="CASE_DIR")
    parser.add_argument("--profile", default="strict", choices=("strict", "darknet-gpu"))
    parser.add_argument("--simulator", action="store_true", help="run the kernels in Numba's CUDA simulator")
    parser.add_argument("--quiet", action="store_true", help="one line per case")
    args = parser.parse_args(argv)
    if args.simulator:
        from darkpy.cuda import enable_simulator
        enable_simulator()
    from darkpy.check import format_table
    from darkpy.cuda.network import check_case_device
    from darkpy.errors import DarkpyError
    failed = False
    for case in args.cases:
        t0 = time.perf_counter()
        try:
            res = check_case_device(case, args.profile)
        except DarkpyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        dt = time.perf_counter() - t0
        status = "PASS" if res.ok else "FAIL"
        failed |= not res.ok
        if args.quiet:
            print(f"{status}  {case}  {res.summary()}  ({dt:.1f} s)")
        else:
            print(format_table(res.rows, title=f"{case}: {'; '.join(res.steps)}"))
            print(f"{status}: {res.summary()} ({dt:.1f} s)\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
