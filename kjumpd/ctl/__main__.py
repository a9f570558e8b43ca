"""``python -m kjumpd.ctl`` runs kjumpctl."""

import sys

from . import main

sys.exit(main())
