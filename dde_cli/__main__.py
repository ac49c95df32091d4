"""`python -m dde_cli`: the `dde` command."""
import sys

from dde_cli import main

sys.exit(main())
