import sys

from personsearch.cli import main

sys.exit(main())
