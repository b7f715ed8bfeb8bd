"""The kernel toolchain: how a ``kernels/*.cu`` file becomes something a device runs.

``launch`` (the launch description every executor consumes), ``kernel_source``
(include expansion with ``#line`` markers and the cache key), ``nvrtc`` (the NVRTC
compile report), ``paths`` (where the kernel sources and the emulator header live).
Nothing here knows an op's math or autograd.
"""
