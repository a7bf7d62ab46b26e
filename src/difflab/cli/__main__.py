"""``python -m difflab.cli`` is the ``difflab`` command too, as it was when the CLI was one file."""

import sys

from difflab.cli import main

sys.exit(main())
