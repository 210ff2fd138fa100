import sys

from greenml.cli import main

sys.exit(main())
