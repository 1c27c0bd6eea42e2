"""``python -m tailorkd``: the command line, also for launchers that take a module (``torchrun -m tailorkd``,
``accelerate launch -m tailorkd``)."""

import sys

from tailorkd.cli import main

sys.exit(main())
