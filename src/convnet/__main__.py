"""``python -m convnet ...`` is the ``convnet`` command."""
import sys

from .app.cli import main

sys.exit(main())
