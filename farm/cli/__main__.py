import sys

from farm.cli.app import main

sys.exit(main())
