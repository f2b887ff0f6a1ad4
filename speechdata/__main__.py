import sys

from speechdata.cli import main

sys.exit(main())
