import sys

from formula_foundry.tracking.ingest.cli import main

sys.exit(main())
