"""The Celery side of rlm-jobs: ``celery -A workers worker -Q rlm.orchestrate`` and friends.

Celery finds ``app`` here. Building the app reads no settings: configuration is loaded
from ``workers.celeryconfig`` the first time Celery needs it.
"""

from workers.app import app

__all__ = ["app"]
