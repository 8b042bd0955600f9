import sys

from cdc_bridge.cli import main

sys.exit(main())
