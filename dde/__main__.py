"""`python -m dde`: the `dde` command (see `dde_cli`)."""
import sys

from dde_cli import main

sys.exit(main())
