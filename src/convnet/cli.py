"""The ``convnet`` command line: one small function per subcommand.

To add a subcommand, write ``cmd_name(args) -> int`` and register it in
``build_parser`` with ``_add(subparsers, "name", cmd_name, "help")``, adding its
options on the parser ``_add`` returns. Imports happen inside each command so
that ``convnet --help`` stays fast and one broken piece cannot stop the others.
"""
from __future__ import annotations

import argparse
import sys


def cmd_doctor(args) -> int:
    """What this machine can run; always exits 0."""
    from . import doctor
    return doctor.main()


def cmd_kernels(args) -> int:
    """Compile every kernel module with NVRTC and print registers/spills; 1 on spill or error."""
    from . import nvrtc
    from .ops import kernel_modules

    modules = kernel_modules()
    if args.module:
        wanted = set(args.module)
        modules = [m for m in modules if str(m.source) in wanted]
        missing = wanted - {str(m.source) for m in modules}
        if missing:
            print(f"convnet kernels: no kernel module {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    archs = args.arch or list(nvrtc.REPORT_ARCHS)
    try:
        archs = [nvrtc.normalize_arch(a) for a in archs]
        supported = nvrtc.supported_archs()
        unsupported = [a for a in archs if a not in supported]
        if unsupported:
            raise ValueError(f"NVRTC {'.'.join(map(str, nvrtc.version()))} cannot target "
                             f"{', '.join(unsupported)} (it supports {', '.join(supported)})")
    except (ValueError, nvrtc.NVRTCUnavailable) as exc:
        print(f"convnet kernels: {exc}", file=sys.stderr)
        return 2
    if not modules:
        print("convnet kernels: no kernel modules are declared in convnet.ops")
        return 0

    rows, failures = nvrtc.compile_all(modules, archs)
    if rows:
        nvrtc.print_report(rows)
    spilling = [r for r in rows if r.spills]
    for exc in failures:
        print(f"\nerror: {exc}", file=sys.stderr)
    print(f"\n{len(modules)} module(s) for {', '.join(archs)}: {len(rows)} kernel build(s), "
          f"{len(spilling)} spilling; {len(failures)} module build(s) failed")
    return 1 if spilling or failures else 0


def _add(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="convnet", description="AlexNet rebuilt from hand-written CUDA kernels.")
    parser.add_argument("--version", action="version", version=f"convnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    _add(sub, "doctor", cmd_doctor,
         "check Python, NumPy, the emu runtime, CuPy, the driver, GPUs and NVRTC")

    kernels = _add(sub, "kernels", cmd_kernels,
                   "compile every kernel with NVRTC (no GPU needed) and report registers, "
                   "spills, shared memory and stack; exits 1 if any kernel spills or fails")
    kernels.add_argument("--arch", action="append", metavar="SM",
                         help="a GPU architecture such as sm_80 (repeatable; "
                              "default: sm_80 and sm_90)")
    kernels.add_argument("--module", action="append", metavar="FILE",
                         help="only this kernel file, as named in its KernelModule "
                              "(e.g. relu.cu; repeatable)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
