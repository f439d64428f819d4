"""``python -m avggrad``: the same as the ``avggrad`` command."""

import sys

from avggrad.cli import main

sys.exit(main())
