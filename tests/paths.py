"""Where test data lives (import as ``from paths import REFERENCE``; tests/ is on sys.path)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
REFERENCE = FIXTURES / "reference"
