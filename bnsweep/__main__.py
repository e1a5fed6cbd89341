import sys

from bnsweep.cli import main

sys.exit(main())
