import sys
from pathlib import Path

# Make test helpers such as `datadriven` importable from tests in subdirectories.
sys.path.insert(0, str(Path(__file__).parent))
