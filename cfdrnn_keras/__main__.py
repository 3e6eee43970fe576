"""`python -m cfdrnn_keras ...` is `cfdrnn ...`."""
import sys

from .cli import main

sys.exit(main())
