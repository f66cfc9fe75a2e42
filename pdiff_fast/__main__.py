"""`python -m pdiff_fast ...` is the `pdiff-fast` command."""
import sys

from .cli import main

sys.exit(main())
