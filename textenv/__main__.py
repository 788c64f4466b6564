"""``python -m textenv`` (and ``accelerate launch -m textenv train ...``): the textenv command."""

import sys

from textenv.cli import main

if __name__ == "__main__":
    sys.exit(main())
