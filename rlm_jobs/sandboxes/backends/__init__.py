"""Sandbox backends: each starts and stops the isolated runtime (``rlm_jobs.sandboxes.base``).

They are found by name in ``rlm_jobs.sandboxes.registry``; optional ones import lazily.
"""
