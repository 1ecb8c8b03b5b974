"""``python -m quorumkv.cli``: the same as ``qkv``."""

import sys

from quorumkv.cli import main

sys.exit(main())
