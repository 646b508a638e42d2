"""``python -m convdsl.tools.bench RESULTS.json...``: print the tables of saved ``--json`` reports."""

import sys

from .command import main

sys.exit(main())
