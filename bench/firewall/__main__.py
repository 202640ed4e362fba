import sys

from bench.firewall.run import main

sys.exit(main())
