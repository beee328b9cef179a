"""`python -m cli ...` is the `refseg` command."""
import sys

from cli.main import main

sys.exit(main())
