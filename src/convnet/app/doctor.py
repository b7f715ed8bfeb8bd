"""``convnet doctor``: what this machine can run, one ✓/✗ line per piece.

Python, NumPy, the CPU runtime (``convnet._emu``) and the compiler it builds
kernels with, CuPy and its CUDA version, the NVIDIA driver, each GPU, and NVRTC.
Every ✗ line says why and what to do. The doctor reports and does not fail: it
exits 0 whatever it finds (a machine without a GPU is a normal place to work:
``cpu`` and ``emu`` run everything), so scripts can always capture its output.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

OK, FAIL = "✓", "✗"


@dataclass(frozen=True)
class Check:
    ok: bool
    label: str
    detail: str

    def line(self) -> str:
        return f"{OK if self.ok else FAIL} {self.label}: {self.detail}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info >= (3, 10)
    detail = f"{version} ({sys.executable})"
    if not ok:
        detail += " — convnet needs Python 3.10 or newer"
    return Check(ok, "Python", detail)


def check_numpy() -> Check:
    try:
        import numpy
    except Exception as exc:
        return Check(False, "NumPy", f"cannot import ({_error(exc)}) — pip install 'numpy>=1.24'")
    return Check(True, "NumPy", numpy.__version__)


def check_emu_module() -> Check:
    try:
        from .. import _emu
    except Exception as exc:
        return Check(False, "emu runtime (convnet._emu)",
                     f"cannot import ({_error(exc)}) — rebuild the package: "
                     f"pip install --no-build-isolation -e .")
    return Check(True, "emu runtime (convnet._emu)", getattr(_emu, "__file__", "built in"))


def _format_compiler_info(info) -> str:
    if isinstance(info, dict) and info.get("version"):
        where = info.get("path") or info.get("command")
        return f"{info['version']} ({where})" if where else str(info["version"])
    if isinstance(info, dict):
        return ", ".join(f"{k}: {v}" for k, v in info.items())
    if isinstance(info, (tuple, list)):
        return " ".join(str(v) for v in info)
    return str(info).strip()


def check_emu_compiler() -> Check:
    label = "emu compiler"
    compiler_info = None
    try:
        from ..backend import emu
        compiler_info = getattr(emu, "compiler_info", None)
    except Exception:
        pass  # the emu backend is not importable; fall back to looking for g++ ourselves
    if compiler_info is not None:
        try:
            return Check(True, label, _format_compiler_info(compiler_info()))
        except Exception as exc:
            return Check(False, label, f"{_error(exc)} — the emu device compiles kernels with "
                                       f"g++ (C++17); install it (apt install g++)")
    gxx = shutil.which("g++")
    if gxx is None:
        return Check(False, label, "g++ not found on PATH — the emu device compiles kernels "
                                   "with g++ (C++17); install it (apt install g++)")
    try:
        out = subprocess.run([gxx, "--version"], capture_output=True, text=True, timeout=30)
        first = out.stdout.splitlines()[0] if out.stdout else "(no version output)"
    except Exception as exc:
        return Check(False, label, f"{gxx} --version failed ({_error(exc)})")
    return Check(True, label, f"{first} ({gxx})")


def check_cuda() -> list[Check]:
    """CuPy, the driver, and each GPU."""
    from ..backend import cuda

    checks: list[Check] = []
    try:
        cupy = cuda.import_cupy()
    except Exception as exc:
        reason = str(exc).removeprefix("CUDA is unavailable: ")
        checks.append(Check(False, "CuPy", f"{reason} — the cuda device needs it; cpu and emu "
                                           f"work without"))
        checks.append(_driver_without_cupy())
        checks.append(Check(False, "GPU", "not listed — GPUs are found through CuPy, which is "
                                          "not installed (see the CuPy line)"))
        return checks

    runtime = cupy.cuda.runtime
    try:
        cuda_version = f"CUDA {cuda.format_cuda_version(runtime.runtimeGetVersion())}"
    except Exception as exc:
        cuda_version = f"CUDA version unknown ({_error(exc)})"
    checks.append(Check(True, "CuPy", f"{cupy.__version__} ({cuda_version})"))

    try:
        driver = int(runtime.driverGetVersion())
    except Exception as exc:
        driver, driver_error = 0, f" ({_error(exc)})"
    else:
        driver_error = ""
    if driver == 0:
        checks.append(Check(False, "NVIDIA driver", f"not found{driver_error} — install the "
                                                    f"NVIDIA driver (nvidia-smi should list "
                                                    f"your GPU)"))
        checks.append(Check(False, "GPU", "none — there is no NVIDIA driver"))
        return checks
    checks.append(Check(True, "NVIDIA driver", f"supports CUDA {cuda.format_cuda_version(driver)}"))

    try:
        count = cuda.probe_device_count(cupy)
    except Exception as exc:
        checks.append(Check(False, "GPU", f"none — {str(exc).removeprefix('CUDA is unavailable: ')}"))
        return checks
    for index in range(count):
        try:
            props = runtime.getDeviceProperties(index)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = props["totalGlobalMem"] / 2**30
            checks.append(Check(True, f"GPU cuda:{index}",
                                f"{name}, compute capability {props['major']}.{props['minor']}, "
                                f"{memory:.1f} GiB"))
        except Exception as exc:
            checks.append(Check(False, f"GPU cuda:{index}", f"cannot query it ({_error(exc)})"))
    return checks


def _driver_without_cupy() -> Check:
    """The driver version through cuda-bindings when CuPy is absent."""
    try:
        from cuda.bindings import driver
    except Exception:
        return Check(False, "NVIDIA driver", "not checked — needs CuPy or cuda-bindings")
    try:
        status, version = driver.cuDriverGetVersion()
    except Exception as exc:
        return Check(False, "NVIDIA driver", f"not found ({_error(exc)}) — on a GPU machine, "
                                             f"install the NVIDIA driver")
    if status != driver.CUresult.CUDA_SUCCESS or not version:
        return Check(False, "NVIDIA driver", f"not usable ({status}) — install the NVIDIA driver")
    return Check(True, "NVIDIA driver", f"supports CUDA {version // 1000}.{version % 1000 // 10}")


def check_nvrtc() -> Check:
    label = "NVRTC"
    from ..toolchain import nvrtc
    try:
        major, minor = nvrtc.version()
    except Exception as bindings_error:
        try:  # CuPy brings its own NVRTC
            import cupy
            major, minor = cupy.cuda.nvrtc.getVersion()
            return Check(True, label, f"{major}.{minor} (CuPy's; the compile check `convnet "
                                      f"kernels` needs cuda-bindings: {nvrtc.INSTALL_HINT})")
        except Exception:
            pass
        return Check(False, label, f"{bindings_error}")
    try:
        from importlib.metadata import version as dist_version
        bindings = f"cuda-bindings {dist_version('cuda-bindings')}"
    except Exception:
        bindings = "cuda-bindings"
    return Check(True, label, f"{major}.{minor} ({bindings}; `convnet kernels` compiles every "
                              f"kernel without a GPU)")


def checks() -> list[Check]:
    """Every check, in the order printed."""
    return [check_python(), check_numpy(), check_emu_module(), check_emu_compiler(),
            *check_cuda(), check_nvrtc()]


def report() -> str:
    from ..backend import devices
    lines = [c.line() for c in checks()]
    try:
        lines.append(f"devices: {', '.join(devices())}")
    except Exception as exc:
        lines.append(f"devices: cannot list them ({_error(exc)})")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
