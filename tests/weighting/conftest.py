import sys
from pathlib import Path

# The shared test helpers (models.py, reference.py, ddp_cases.py) live in tests/.
sys.path.insert(0, str(Path(__file__).parents[1]))
