"""``python -m mpcourse`` runs the ``mpcourse`` command."""

import sys

from mpcourse.cli import main

sys.exit(main())
