import sys

from cdc_bridge.cli.main import main

sys.exit(main())
