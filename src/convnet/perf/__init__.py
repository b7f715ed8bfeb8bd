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

* ``kernel_figures``: those static figures per kernel, cached on disk.
* ``emu_traffic``: the emulator's memory traffic of launches (``traffic``, through
  ``emu.profile``), as the model takes it.
* ``model``: the launch model — predicted time = max(compute, DRAM, L1, shared) +
  launch overhead, with the bound named; every assumption in its docstring.
* ``layers``, ``step``: the launches of each layer (and of one op, ``--op``) and of
  an AlexNet training step, built by the library's launch builders for a GPU.
* ``predict``, ``command``: build, measure, model and print (``convnet perf``).
* ``calibration``: predicted beside measured, for the GPU benchmarks.

Nothing here needs a GPU or a driver. The modules import lazily so that
``convnet.perf.gpus`` and ``convnet.perf.occupancy`` work without the extras.
"""
