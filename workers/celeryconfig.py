"""Imported by Celery when the app is first configured: settings from the environment."""

from rlm_jobs.config import Settings
from workers.app import celery_config

globals().update(celery_config(Settings()))
