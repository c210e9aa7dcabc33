import sys

from diffdict.cli import main

sys.exit(main())
