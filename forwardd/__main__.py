"""``python -m forwardd``: the same as the ``forwardd`` command."""

import sys

from forwardd.cli import main

sys.exit(main())
