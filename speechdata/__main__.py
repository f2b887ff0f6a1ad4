"""``python -m speechdata``: the same as the ``speechdata`` command."""

import sys

from speechdata.cli import main

if __name__ == "__main__":
    sys.exit(main())
