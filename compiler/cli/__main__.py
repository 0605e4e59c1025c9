"""``python -m compiler.cli``: the ``hwcc`` command (for ``qemu-x86_64-static ... python``)."""

import sys

from .main import main

sys.exit(main())
