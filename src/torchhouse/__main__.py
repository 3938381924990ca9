"""``python -m torchhouse``: the ``torchhouse`` command."""

import sys

from torchhouse.frontends.cli import main

sys.exit(main())
