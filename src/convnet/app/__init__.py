"""The application: the ``convnet`` command and what it drives.

``cli`` (the command line), ``train`` (``convnet train``: the run loop), ``settings``
(its options, defaults and checks), ``runs`` (run folders), ``checkpoint`` (safe
checkpoints), ``evaluate`` (ten-crop testing), ``doctor`` (what this machine can run).
The library (``convnet.nn``, ``convnet.optim``, ``convnet.data`` ...) never imports
from here.
"""
