"""``python3 -m kjumpd.daemon``: the same process as the ``kjumpd`` command.

The daemon's modules are imported once, under their package names, whatever
the entry point: this file only calls ``kjumpd.daemon.main.main``.
"""

import sys

from .main import main

sys.exit(main())
