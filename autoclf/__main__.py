import sys

from autoclf.cli import main

sys.exit(main())
