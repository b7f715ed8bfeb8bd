"""Performance figures of the kernels without a GPU (issue 11), toolchain tier.

This package knows kernels and compilers, nothing of autograd or layers:

* ``gpus``: the GPUs the figures are computed for (SMs, clocks, peaks, memory
  bandwidth, L2) and the per-architecture limits the occupancy rules use, each
  number with its source.
* ``occupancy``: NVIDIA's theoretical-occupancy rules (``cuda_occupancy.h``):
  resident blocks and warps per SM from threads, registers and shared memory,
  and which resource limits them.
* ``sass``: the machine code of the exact GPU build (NVRTC with the project's
  options, disassembled by NVIDIA's ``nvdisasm`` from PyPI: the ``perf`` extra),
  parsed into instructions and loops, with each loop's instruction mix per
  iteration; ``static_report`` gives the figures for every kernel instantiation.

Nothing here needs a GPU or a driver. The modules import lazily so that
``convnet.perf.gpus`` and ``convnet.perf.occupancy`` work without the extras.
"""
