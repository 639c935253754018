"""Imported by Celery when the app is first configured: settings from the environment.

Every ``celery -A workers`` command loads this: worker, flower, inspect, events, status.
Their control broadcasts (Flower runs several at once: inspect calls, enable_events, its
event receiver's wake-up) each hold a pooled connection while their producer takes a
second one from the same pool, so a small pool deadlocks them. These processes go without
a pool (a short connection per broadcast); ``celery worker`` puts its small pool back at
start (``MonitoringStep``), before anything has opened one.
"""

from rlm_jobs.config import Settings
from workers.app import celery_config

globals().update(celery_config(Settings(), broker_pool_limit=None))
