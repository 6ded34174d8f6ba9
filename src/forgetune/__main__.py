import sys

from forgetune.cli import main

sys.exit(main())
