"""``python -m latentgen.cli ...`` (used under ``accelerate launch``): the ``latentgen`` command."""

import sys

from . import main

sys.exit(main())
