"""The ``darkpy`` command.

    darkpy                          forward + one training step on the shipped default network
    darkpy forward CFG [...]        inference forward, per-layer times, optional dump
    darkpy backward CFG [...]       training forward + backward (+ --update), optional dump
    darkpy check CASE_DIR...        re-run dumps (darknet's or ours) and compare bitwise
    darkpy compare DIR_A DIR_B      compare two dumps tensor by tensor
    darkpy convert A B              cfg <-> YAML, lossless
    darkpy info CFG                 darknet's layer table with BFLOPs
    darkpy gradcheck CFG [...]      float64 finite differences against every backward pass
    darkpy bench [...]              benchmarks against the reference kernels, darknet, OpenCV

Errors print one line naming the file/line/layer and exit with status 2
(``--debug`` shows the traceback); ``check``/``compare`` exit 1 when a tensor differs.
"""

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from darkpy import kernels
from darkpy.errors import DarkpyError

#: The network the CLI runs with no arguments (written for darkpy; see cfg/README.md).
DEFAULT_CFG = Path(__file__).resolve().parent.parent / "cfg" / "darkpy-tiny.cfg"


#: Subcommands with their own argument parser: name -> (module, function, help).
DELEGATED = {
    "gradcheck": ("darkpy.gradcheck", "main_gradcheck",
                  "float64 finite differences against every layer's backward pass"),
    "bench": ("darkpy.bench", "main", "benchmarks: medians and ratios against the baselines"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        import importlib
        module, func, _ = DELEGATED[argv[0]]
        try:
            return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
        except DarkpyError as exc:
            print(f"darkpy {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    parser = _parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run"] + argv
    args = parser.parse_args(argv)
    import darkpy.network
    before = kernels.active(), darkpy.network.ALLOW_UNUSED
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            kernels.use(args.kernels)
            darkpy.network.ALLOW_UNUSED = args.allow_unused
            return int(args.func(args) or 0)
    except DarkpyError as exc:
        if args.debug:
            raise
        print(f"darkpy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("darkpy: interrupted", file=sys.stderr)
        return 130
    finally:  # a command run in-process leaves the caller's kernel set and defaults as they were
        kernels.use(before[0])
        darkpy.network.ALLOW_UNUSED = before[1]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each, like errors."""
    print(f"darkpy: warning: {message}", file=sys.stderr if file is None else file)


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--allow-unused", action="store_true",
                        help="accept cfg options no layer reads, with a warning (darknet's behaviour); "
                             "by default they are an error")
    common.add_argument("--kernels", choices=kernels.IMPLEMENTATIONS, default="fast",
                        help="fast kernels (default) or the loop-for-loop reference ones")
    p = argparse.ArgumentParser(prog="darkpy", parents=[common],
                                description="darknet's layer engine in Python + Numba, bit-exact with darknet.")
    from darkpy import __version__
    p.add_argument("--version", action="version", version=f"darkpy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def net_args(sp, cfg_default=None):
        sp.add_argument("cfg", nargs="?" if cfg_default else None, default=cfg_default,
                        help="darknet .cfg or .yaml network description")
        sp.add_argument("--weights", help="darknet .weights file (default: deterministic random weights)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random weights/input (default 0)")
        sp.add_argument("--input", help="raw little-endian float32 input, batch*inputs values "
                                        "(default: deterministic uniform [0,1) values)")
        sp.add_argument("--batch", type=int, help="override the cfg's batch")
        sp.add_argument("--dump", metavar="DIR", help="write the run as a dump directory")
        sp.add_argument("--force", action="store_true", help="replace an existing dump directory")
        sp.add_argument("--repeat", type=int, default=1, help="run N times and report the fastest")

    sp = sub.add_parser("run", parents=[common], help="forward + one training step (default command)")
    net_args(sp, cfg_default=str(DEFAULT_CFG))
    sp.set_defaults(repeat=3)
    sp.add_argument("--truth", help="raw float32 truth, batch*truths values (default: zeros)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("forward", parents=[common], help="inference forward pass")
    net_args(sp, cfg_default=str(DEFAULT_CFG))
    sp.set_defaults(func=cmd_forward)

    sp = sub.add_parser("backward", parents=[common], help="training forward + backward pass")
    net_args(sp, cfg_default=str(DEFAULT_CFG))
    sp.add_argument("--truth", help="raw float32 truth, batch*truths values (default: zeros)")
    sp.add_argument("--update", action="store_true", help="also run update_network")
    sp.set_defaults(func=cmd_backward)

    sp = sub.add_parser("check", parents=[common], help="re-run dump directories and compare bitwise")
    sp.add_argument("cases", nargs="+", metavar="CASE_DIR")
    sp.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    sp.add_argument("--quiet", "-q", action="store_true", help="one line per case")
    sp.add_argument("--force", action="store_true", help="let --json overwrite a file of a case")
    sp.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where to re-run the case (cuda: Numba CUDA kernels; exit 2 without a GPU)")
    sp.add_argument("--profile", choices=("strict", "darknet-gpu"), default="strict",
                    help="with --device cuda: darknet's CPU bits (strict) or darknet's own GPU kernels")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("compare", parents=[common], help="compare two dump directories")
    sp.add_argument("a", metavar="DIR_A")
    sp.add_argument("b", metavar="DIR_B")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("convert", parents=[common], help="convert a network description cfg <-> YAML")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument("--force", action="store_true", help="overwrite dst even if it is an input")
    sp.set_defaults(func=cmd_convert)

    for name, (_, _, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (see: darkpy {name} --help)", add_help=False)

    sp = sub.add_parser("info", parents=[common], help="darknet's layer table and BFLOPs")
    sp.add_argument("cfg")
    sp.add_argument("--batch", type=int, help="override the cfg's batch")
    sp.set_defaults(func=cmd_info)
    return p


# ----------------------------------------------------------------------------- commands

def _load(args):
    from darkpy.description import load
    from darkpy.network import build_network, randomize_parameters
    net = build_network(load(args.cfg), batch=args.batch)
    if args.weights:
        from darkpy.weights import load_weights
        load_weights(net, args.weights)
    else:
        randomize_parameters(net, args.seed)
    if args.input:
        net.input[:] = _read_raw(args.input, net.input.size, "input")
    else:
        rng = np.random.Generator(np.random.PCG64(args.seed + 1))
        net.input[:] = rng.random(net.input.size, dtype=np.float32)
    if getattr(args, "truth", None):
        net.truth[:] = _read_raw(args.truth, net.truth.size, "truth")
    return net


def _read_raw(path, size, what):
    try:
        data = np.fromfile(path, dtype="<f4")
    except OSError as exc:
        raise DarkpyError(f"cannot read the {what} file: {exc.strerror or exc}", path=path) from None
    if data.size != size:
        raise DarkpyError(f"the {what} file holds {data.size} float32 values; the network needs {size}",
                          path=path)
    return data


def _layer_table(net, forward_s, backward_s=None):
    print(f"{'layer':>5}  {'type':<14} {'output':>18}  {'forward ms':>10}" +
          (f"  {'backward ms':>11}" if backward_s else ""))
    for i, l in enumerate(net.layers):
        shape = f"{l.out_c}x{l.out_h}x{l.out_w}" if l.out_c * l.out_h * l.out_w == l.outputs else str(l.outputs)
        row = f"{i:>5}  {l.type:<14} {shape:>18}  {forward_s[i] * 1e3:>10.3f}"
        if backward_s:
            row += f"  {backward_s.get(i, 0.0) * 1e3:>11.3f}"
        print(row)
    total = sum(forward_s) * 1e3
    line = f"total forward {total:.3f} ms"
    if backward_s:
        line += f", backward {sum(backward_s.values()) * 1e3:.3f} ms"
    print(line)


def _fastest(runs):
    """The fastest repeat after the first (which pays Numba's compile or cache load), and the first's total."""
    total = lambda t: sum(t[0]) + sum(t[1].values())  # noqa: E731
    first = total(runs[0])
    best = min(runs[1:] or runs, key=total)
    if len(runs) > 1:
        print(f"first run {first * 1e3:.1f} ms (includes Numba compilation or cache load); "
              f"table: fastest of the {len(runs) - 1} runs after it")
    return best


def cmd_forward(args):
    net = _load(args)
    net.train = 0
    with tempfile.TemporaryDirectory() as tmp:
        return _forward(args, net, tmp)


def _forward(args, net, tmp):
    from darkpy.network import forward_network
    weights_file = _weights_before(args, net, tmp)
    runs = []
    for _ in range(max(1, args.repeat)):
        t = []
        forward_network(net, timings=t)
        runs.append((t, {}))
    print(f"{args.cfg}: {net.n} layers, batch {net.batch}, input {net.c}x{net.h}x{net.w}, "
          f"kernels {kernels.active()}")
    _layer_table(net, _fastest(runs)[0])
    out = net.output
    print(f"output: {out.size} values, sum {float(out.astype(np.float64).sum()):.9g}")
    if args.dump:
        _dump(args, net, ["forward train=0 (prefix infer_)"],
              [(f"infer_layer{i:02d}_output", l.output, _shape(l, net), "forward")
               for i, l in enumerate(net.layers)], weights_file)
    return 0


def cmd_backward(args, update=None):
    net = _load(args)
    update = args.update if update is None else update
    with tempfile.TemporaryDirectory() as tmp:
        return _backward(args, net, update, tmp)


def _backward(args, net, update, tmp):
    from darkpy.network import backward_network, forward_network, update_network
    weights_file = _weights_before(args, net, tmp)
    runs = []
    tensors = []
    net.seen += net.batch
    net.train = 1
    from darkpy import crand
    for rep in range(max(1, args.repeat)):
        tf, tb = [], []
        crand.srand(args.seed)  # dropout/crop draw C's rand() while training: a known stream
        forward_network(net, timings=tf)
        if rep == 0:
            tensors += [(f"layer{i:02d}_output", l.output.copy(), _shape(l, net), "forward")
                        for i, l in enumerate(net.layers)]
            tensors.append(("cost", net.cost.copy(), [1], "forward"))
            before = [_params(l) for l in net.layers]
        backward_network(net, timings=tb)
        if rep == 0:
            after_bw = [_params(l) for l in net.layers]
        runs.append((tf, dict(tb)))
        if rep < args.repeat - 1:  # undo the accumulation so every repeat computes the same thing
            for l, saved in zip(net.layers, before):
                _restore(l, saved)
    for l, saved in zip(net.layers, after_bw):
        _restore(l, saved)
    for i, l in enumerate(net.layers):
        if l.delta is not None:
            tensors.append((f"layer{i:02d}_delta", l.delta.copy(), _shape(l, net), "backward"))
        for field in ("weight_updates", "bias_updates", "scale_updates", "rolling_mean", "rolling_variance"):
            v = getattr(l, field)
            if v is not None and l.type in ("convolutional", "connected", "batchnorm"):
                tensors.append((f"layer{i:02d}_{field}", v.copy(), [v.size], "backward"))
    steps = ["forward train=1", "backward"]
    if update:
        update_network(net)
        steps.append("update_network (learning rate, momentum, decay from [net])")
        for i, l in enumerate(net.layers):
            for field in ("weights", "biases", "scales"):
                v = getattr(l, field)
                if v is not None and l.update is not None:
                    tensors.append((f"layer{i:02d}_{field}_after", v.copy(), [v.size], "update"))
    print(f"{args.cfg}: {net.n} layers, batch {net.batch}, input {net.c}x{net.h}x{net.w}, "
          f"kernels {kernels.active()}")
    tf, tb = _fastest(runs)
    _layer_table(net, tf, tb)
    print(f"cost: {float(net.cost[0]):.9g}")
    if args.dump:
        _dump(args, net, steps, tensors, weights_file, truth=True, srand=args.seed)
    return 0


def cmd_run(args):
    args.update = True
    return cmd_backward(args)


_PARAM_FIELDS = ("weight_updates", "bias_updates", "scale_updates", "rolling_mean", "rolling_variance")


def _params(l):
    return {f: getattr(l, f).copy() for f in _PARAM_FIELDS if getattr(l, f) is not None}


def _restore(l, saved):
    for f, v in saved.items():
        getattr(l, f)[:] = v


def _shape(l, net):
    if l.out_c * l.out_h * l.out_w == l.outputs:
        return [l.batch, l.out_c, l.out_h, l.out_w]
    return [l.batch, l.outputs]


def _weights_before(args, net, tmp):
    """The .weights file holding the parameters the run starts from (for a dump), or None."""
    if not args.dump:
        return None
    if args.weights:
        return Path(args.weights)
    from darkpy.weights import save_weights
    path = Path(tmp) / "weights.weights"
    save_weights(net, path)
    return path


def _dump(args, net, steps, tensors, weights_file, truth=False, srand=None):
    from darkpy.description import load, to_cfg_text
    from darkpy.dump import write_case
    extra = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "network.cfg"
        cfg.write_text(to_cfg_text(load(args.cfg)))
        extra.append(("network.cfg", cfg))
        if weights_file:
            extra.append(("weights.weights", weights_file))
        shape = [net.batch, net.c, net.h, net.w] if net.c * net.h * net.w == net.inputs else [net.batch, net.inputs]
        given = [("input", net.input, shape, "given")]
        if truth:
            given.append(("truth", net.truth, [net.batch, net.truths], "given"))
        params = {"cfg": "network.cfg", "weights": "weights.weights" if weights_file else None,
                  "batch": net.batch, "c": net.c, "h": net.h, "w": net.w, "layers": net.n, "steps": steps}
        if srand is not None:
            params["srand"] = srand
        build = {"darkpy": __import__("darkpy").__version__, "kernels": kernels.active()}
        write_case(args.dump, "network", params, given + tensors, build=build, extra_files=extra,
                   force=args.force)
    print(f"dump written to {args.dump}")


def cmd_check(args):
    from darkpy.check import check_case, format_table
    if args.device == "cuda":
        from darkpy.cuda.network import check_case_device
        check_case = lambda case: check_case_device(case, profile=args.profile)  # noqa: E731
    elif args.profile != "strict":
        raise DarkpyError("--profile darknet-gpu needs --device cuda")
    results, ok = [], True
    for case in args.cases:
        t0 = time.perf_counter()
        res = check_case(case)
        dt = time.perf_counter() - t0
        ok &= res.ok
        status = "PASS" if res.ok else "FAIL"
        if args.quiet:
            print(f"{status}  {case}  {res.summary()}  ({dt:.1f} s)")
        else:
            print(f"{case} ({res.kind}; steps: {', '.join(res.steps)})")
            print(format_table(res.rows))
            print(f"{status}: {res.summary()} ({dt:.1f} s)\n")
        results.append(res)
    if args.json:
        rows = [{"case": r.path, "tensor": row.name, "shape": list(row.shape), "identical": row.identical,
                 "differing": row.differing, "max_ulp": row.max_ulp, "max_abs": row.max_abs}
                for r in results for row in r.rows]
        from darkpy.description import write_text_atomic
        inputs = [p for case in args.cases if Path(case).is_dir() for p in Path(case).iterdir()]
        write_text_atomic(args.json, json.dumps(rows, indent=1), force=args.force, inputs=inputs)
    return 0 if ok else 1


def cmd_compare(args):
    from darkpy.check import compare_cases, format_table
    res = compare_cases(args.a, args.b)
    print(format_table(res.rows, title=f"{args.a} (reference) vs {args.b}"))
    print(("SAME" if res.ok else "DIFFERENT") + f": {res.summary()}")
    return 0 if res.ok else 1


def cmd_convert(args):
    from darkpy.description import convert
    convert(args.src, args.dst, force=args.force)
    print(f"wrote {args.dst}")
    return 0


def cmd_info(args):
    from darkpy.description import load
    from darkpy.info import network_table
    from darkpy.network import build_network
    net = build_network(load(args.cfg), batch=args.batch)
    print(network_table(net))
    return 0


if __name__ == "__main__":
    sys.exit(main())
