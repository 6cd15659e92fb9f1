"""``python -m mpcourse.production train ...`` (see :mod:`mpcourse.production.cli`)."""

import sys

from mpcourse.production.cli import main

sys.exit(main())
