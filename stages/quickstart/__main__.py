"""``python -m stages.quickstart``: see :mod:`stages.quickstart`."""

import sys

from stages.quickstart.driver import main

sys.exit(main())
