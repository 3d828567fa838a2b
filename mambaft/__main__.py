import sys

from mambaft.cli import main

sys.exit(main())
