"""`python -m pdiff_fast ...` is the `pdiff-fast` command; under torchrun (WORLD_SIZE set) its
`record` wrapper passes a rank's uncaught error to torchrun, whose summary names the rank."""
import os
import sys

from .cli import main

if "WORLD_SIZE" in os.environ:
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)
sys.exit(main())
