"""`python -m admin.cli ...` is `faqbot ...` (the tests and the load tests start servers this way)."""

import sys

from admin.cli.main import main

sys.exit(main())
