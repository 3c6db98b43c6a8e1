"""``python -m ackring ...`` runs the ``ackring`` command line."""

import sys

from ackring.cli import main

if __name__ == "__main__":
    sys.exit(main())
