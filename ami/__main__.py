import sys

from ami.cli import main

sys.exit(main())
