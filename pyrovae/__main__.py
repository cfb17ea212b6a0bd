"""``python -m pyrovae``: the command line (see :mod:`pyrovae.app.cli`), also as
``torchrun --nproc_per_node N -m pyrovae train ...``."""

import sys

from .app.cli import main

sys.exit(main())
