"""Every kernel once (benchmarks/kernel_tour.py) on emu under the runtime's checks:
index checks, alignment and NaN-filled shared memory in reverse schedule order, the
race check in a random schedule and the initialisation check in-process, and
AddressSanitizer in a subprocess. On a GPU, gpu_check.sh runs the same tour under
compute-sanitizer."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path


from conftest import require_device, run_clean_under_asan

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kernel_tour import Tour  # noqa: E402


def test_tour_under_bounds_checks_reverse_order_and_nan_shared_memory(capsys):
    require_device("emu")
    from convnet.backend import emu
    with emu.debug(check="bounds", schedule="reverse", fill_shared=True):
        tour = Tour("emu")
        tour.run()
    assert tour.cases >= 50


def test_tour_under_race_check_in_random_order():
    """Shared memory per barrier interval and global memory across the launch, with
    threads switched at memory accesses in a seeded random order (issue 10, item 1)."""
    require_device("emu")
    from convnet.backend import emu
    with emu.debug(check="race", schedule="random", seed=1):
        tour = Tour("emu")
        tour.run()
    assert tour.cases >= 50


def test_tour_under_init_check():
    """No kernel reads shared memory its block did not write, nor bytes of an output
    made by ``empty`` that nothing wrote (issue 10, item 2); alignment is checked in
    this build too, and in the bounds build above."""
    require_device("emu")
    from convnet.backend import emu
    with emu.debug(check="init"):
        tour = Tour("emu")
        tour.run()
    assert tour.cases >= 50


def test_tour_under_address_sanitizer():
    run_clean_under_asan(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from convnet.backend import emu
        from benchmarks.kernel_tour import Tour
        with emu.debug(check="address"):
            Tour("emu").run()
        print("CLEAN")
    """), timeout=600)


def test_tour_on_cuda():
    require_device("cuda:0")
    Tour("cuda:0").run()
