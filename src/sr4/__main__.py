import sys

from sr4.cli import main

sys.exit(main())
