"""``python -m quorumkv.server``: the same as ``qkv server``."""

import sys

from quorumkv.server._main import main

sys.exit(main())
