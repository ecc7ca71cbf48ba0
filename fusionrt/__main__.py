import sys

from fusionrt.cli import main

sys.exit(main())
