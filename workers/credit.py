"""Flow control for llm workers: a process reserves chunk tasks by the prompts they carry.

Celery reserves messages up to its prefetch count, one message one unit. An llm task carries
up to ``llm_chunk_size`` prompts, so a process counting messages could reserve 16 chunks of
8 prompts, 128 prompts, for its 16 provider slots while another process idled (bench
scenario 5 measured 2.5x the throughput of one process with four). ``PromptCredit`` makes
the consumer stop reserving while the prompts of its unfinished llm tasks fill the
process's ``llm_worker_concurrency`` slots; Celery's own limit on messages still holds.

It works through the consumer's ``qos`` value, which Celery's event loop applies to the
broker channel before it asks the broker for the next message: the loop thread lowers it
when a chunk arrives (``task_received``) and raises it again when the chunk's task ends
(``task_postrun``, sent from a pool thread and handed to the loop with ``hub.call_soon``).
A worker without an event loop (the solo pool) keeps Celery's plain prefetch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun, task_received, task_revoked
from celery.worker import state as worker_state

from workers.app import LLM_TASK
from workers.runtime import settings_of

log = logging.getLogger(__name__)


def prompts_in(args: Any) -> int:
    """The prompts an llm task's arguments carry (its call ids); 1 when they are malformed,
    since the task will reject them at once."""
    if isinstance(args, list | tuple) and len(args) == 3 and isinstance(args[1], list):
        return max(1, len(args[1]))
    return 1


class PromptCredit:
    """The prompts one consumer holds, and the cut this makes in its prefetch count.

    Every method runs on the consumer's event-loop thread, the only one that touches
    ``consumer.qos`` (Celery replaces its lock with a dummy there).
    """

    def __init__(
        self, consumer: Any, slots: int, live_ids: Callable[[], set[str]] | None = None
    ) -> None:
        self.consumer = consumer
        self._slots = slots
        self._live_ids = live_ids or _celery_live_ids
        # task id -> prompts of each delivery still running (a redelivery may overlap).
        self._held: defaultdict[str, list[int]] = defaultdict(list)
        self._prompts = 0
        self._tasks = 0
        self._qos = consumer.qos
        self._cut = 0  # how far this has lowered self._qos.value

    @property
    def prompts(self) -> int:
        return self._prompts

    def take(self, task_id: str, prompts: int) -> None:
        self._held[task_id].append(prompts)
        self._prompts += prompts
        self._tasks += 1
        if self._prompts >= self._slots:
            self._forget_ended(keep=task_id)
        self._apply()

    def give_back(self, task_id: str) -> None:
        deliveries = self._held.get(task_id)
        if not deliveries:
            return  # not counted here (a task received before this consumer restarted)
        self._prompts -= deliveries.pop(0)
        self._tasks -= 1
        if not deliveries:
            del self._held[task_id]
        self._apply()

    def _forget_ended(self, keep: str) -> None:
        """Drop tasks Celery no longer holds whose end this never heard of.

        A safety net: a held chunk that never gave its prompts back (a pool thread that
        died without ``task_postrun``) would otherwise shrink this worker's share for
        good, and stop it taking messages once the lost prompts filled its slots.
        """
        live = self._live_ids()
        for task_id in [t for t in self._held if t != keep and t not in live]:
            deliveries = self._held.pop(task_id)
            self._prompts -= sum(deliveries)
            self._tasks -= len(deliveries)
            log.warning(
                "llm task %s ended unseen; its %d prompts are free again", task_id, sum(deliveries)
            )

    def _apply(self) -> None:
        qos = self.consumer.qos
        if qos is not self._qos:  # the connection restarted with a fresh, uncut prefetch
            self._qos, self._cut = qos, 0
        if not qos.value:
            return  # prefetch disabled (0 means no limit): nothing to cut
        uncut = qos.value + self._cut
        # Full: at most the messages held already, so the broker sends nothing more until
        # a chunk ends (never below 1, which kombu would read as "no limit").
        full = self._prompts >= self._slots
        target = max(1, min(uncut, self._tasks)) if full else uncut
        self._cut = uncut - target
        qos.value = target  # the event loop calls qos.update() before it polls again


def _celery_live_ids() -> set[str]:
    """Tasks this worker process holds: reserved, running, or waiting for their ETA."""
    return set(worker_state.requests) | {r.id for r in worker_state.scheduled_requests}


# One credit per llm consumer, by worker hostname: the pool thread that ends a task finds
# its credit from the task's request (one process may run two workers, as the local stack
# does).
_credits: dict[str, PromptCredit] = {}


@task_received.connect
def _on_received(sender: Any, request: Any, **_: Any) -> None:
    if request.name != LLM_TASK or getattr(sender, "hub", None) is None:
        return
    credit = _credits.get(sender.hostname)
    if credit is None or credit.consumer is not sender:
        slots = settings_of(sender.app).llm_worker_concurrency
        credit = _credits[sender.hostname] = PromptCredit(sender, slots)
    credit.take(request.id, prompts_in(request.args))


def _release(hostname: str | None, task_id: str | None) -> None:
    credit = _credits.get(hostname or "")
    if credit is not None and task_id:
        credit.consumer.hub.call_soon(credit.give_back, task_id)


@task_postrun.connect
def _on_postrun(sender: Any, task_id: str | None = None, **_: Any) -> None:
    if getattr(sender, "name", None) == LLM_TASK:
        _release(sender.request.hostname, task_id)


@task_revoked.connect
def _on_revoked(request: Any = None, **_: Any) -> None:
    if request is not None and getattr(request, "name", None) == LLM_TASK:
        _release(getattr(request, "hostname", None), getattr(request, "id", None))
