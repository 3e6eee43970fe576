"""`python -m cfdrnn_keras.cli ...` is `cfdrnn ...`."""
import sys

from . import main

sys.exit(main())
