"""``python -m unifeed``: the command line."""

import sys

from unifeed.cli.main import main

sys.exit(main())
