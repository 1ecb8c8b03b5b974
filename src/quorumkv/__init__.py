"""quorumkv: a highly available, strongly consistent, sharded key-value store."""

import logging

# A library logs but never decides where logs go: without this, Python's last-resort
# handler would print quorumkv's warnings to stderr in programs that set up no logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
