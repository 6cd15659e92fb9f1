"""``python -m mpcourse.authoring ...`` (see :func:`mpcourse.authoring.notebooks.main`)."""

import sys

from mpcourse.authoring.notebooks import main

sys.exit(main())
