"""``python -m dawin_fast``: the ``dawin-fast`` command."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
