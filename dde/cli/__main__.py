import sys

from dde.cli import main

sys.exit(main())
