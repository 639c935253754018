from pathlib import Path

from rlm_jobs.config import Settings
from rlm_jobs.models import Limits

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in text]
    assert missing == []


def test_every_limit_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in Limits.model_fields if f"| `{name}` |" not in text]
    assert missing == []
