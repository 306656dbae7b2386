import sys

from mhd.ctl.main import main

sys.exit(main())
