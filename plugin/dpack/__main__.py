"""``python -m dpack``: the same as the ``dpack`` command."""

import sys

from .cli import main

sys.exit(main())
