"""Persistent sessions: one REPL and one conversation across several questions.

Library mode (``RLM(persistent=True)``) keeps a ``SessionRepl`` (``repl``) for the life of
the ``RLM``. The service (``rlm-jobs submit --session ID``) keeps only which jobs a session
holds (``store``); each job of a session rebuilds the REPL by replaying the earlier ones
from their journals, then answers live (``runner``), on whichever orchestrator takes it.
"""
