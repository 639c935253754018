"""Flow control for llm workers: a process reserves chunk tasks by the prompts they carry.

Celery reserves messages up to its prefetch count, one message one unit. An llm task carries
up to ``llm_chunk_size`` prompts, so a process counting messages could reserve 16 chunks of
8 prompts, 128 prompts, for its 16 provider slots while another process idled (see
docs/benchmarks.md, scaling with llm processes). ``PromptCredit`` stops
the consumer asking the broker for messages while the prompts of its unfinished llm tasks
fill the process's ``llm_worker_concurrency`` slots; Celery's own limit on messages still
holds, since the check is added in front of it.

The check wraps the Redis channel's ``qos.can_consume``, which kombu consults before every
BRPOP, as Celery's own ``worker_disable_prefetch`` does; ``PromptCreditStep`` installs it
each time the consumer (re)connects. Prompts are counted on the consumer's event-loop
thread: added from ``task_received`` (sent there) and given back when the task ends
(``task_postrun``, sent from a pool thread and handed to the loop with ``hub.call_soon``,
which also wakes the loop so the next BRPOP goes out at once).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from types import MethodType
from typing import Any

from celery import bootsteps
from celery.signals import task_postrun, task_received, task_revoked
from celery.worker import state as worker_state

from workers.names import LLM_TASK

log = logging.getLogger(__name__)


def prompts_in(args: Any) -> int:
    """The prompts an llm task's arguments carry (its call ids); 1 when they are malformed,
    since the task will reject them at once."""
    if isinstance(args, list | tuple) and len(args) == 2 and isinstance(args[1], list):
        return max(1, len(args[1]))
    return 1


def _celery_live_ids() -> set[str]:
    """Tasks this worker process holds: reserved, running, or waiting for their ETA."""
    return set(worker_state.requests) | {r.id for r in worker_state.scheduled_requests}


class PromptCredit:
    """The prompts of the llm tasks one consumer holds, against its provider slots.

    ``take``, ``give_back`` and ``has_room`` run on the consumer's event-loop thread;
    ``ending`` on the pool thread whose task ended, just before its ``give_back`` is queued.
    """

    def __init__(self, slots: int, live_ids: Callable[[], set[str]] = _celery_live_ids) -> None:
        self.slots = slots
        self._live_ids = live_ids
        # task id -> prompts of each delivery still running (a redelivery may overlap).
        self._held: defaultdict[str, list[int]] = defaultdict(list)
        self._prompts = 0
        # Ended tasks whose give_back is queued for the loop thread (set.add is atomic).
        self._ending: set[str] = set()

    @property
    def prompts(self) -> int:
        return self._prompts

    def holds(self, task_id: str) -> bool:
        return task_id in self._held

    def has_room(self) -> bool:
        return self._prompts < self.slots

    def take(self, task_id: str, prompts: int) -> list[str]:
        """Count a delivered task's prompts; the ids of ended tasks this forgot meanwhile."""
        self._held[task_id].append(prompts)
        self._prompts += prompts
        return [] if self.has_room() else self._forget_ended(keep=task_id)

    def ending(self, task_id: str) -> None:
        self._ending.add(task_id)

    def give_back(self, task_id: str) -> None:
        self._ending.discard(task_id)
        deliveries = self._held.get(task_id)
        if not deliveries:
            return  # forgotten already, or received before this consumer (re)started
        self._prompts -= deliveries.pop(0)
        if not deliveries:
            del self._held[task_id]

    def _forget_ended(self, keep: str) -> list[str]:
        """Drop tasks Celery no longer holds whose end this never heard of.

        A safety net: a chunk that never gave its prompts back (its ``task_postrun`` was
        never sent) would otherwise shrink this worker's share for good, and stop it
        taking messages once such chunks filled its slots.
        """
        live = self._live_ids()
        forgotten = [t for t in self._held if t != keep and t not in live]
        for task_id in forgotten:
            ended = sum(self._held.pop(task_id))
            self._prompts -= ended
            if task_id not in self._ending:  # else its give_back is merely still queued
                log.warning(
                    "llm task %s ended unseen; its %d prompts are free again", task_id, ended
                )
        return forgotten


class PromptCreditStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: the consumer asks the broker for nothing while its credit is full.

    Started after the task consumer on every (re)connect, so the wrapped ``can_consume`` is
    always the live channel's. Redis brokers only: other transports do not consult it.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if c.connection.transport.driver_type != "redis":
            return
        # One consumer per app; the credit survives its reconnects. ``c.app`` is our
        # RLMCelery (workers/base.py), typed there; Celery hands it over untyped.
        app = c.app
        credit = app.prompt_credit
        if credit is None:
            credit = app.prompt_credit = PromptCredit(app.settings.llm_worker_concurrency)
        channel_qos = c.task_consumer.channel.qos
        messages_allow = channel_qos.can_consume

        def can_consume(self: Any) -> bool:
            return bool(credit.has_room() and messages_allow())

        channel_qos.can_consume = MethodType(can_consume, channel_qos)


# The credit each running llm task counts against, by task id. Process-wide because Celery's
# signals are: ``task_postrun`` runs on a pool thread and knows only the task (its request's
# hostname is not the consumer's, and its app is the pool's default app, not the consumer's).
_credit_of_task: dict[str, tuple[Any, PromptCredit]] = {}


@task_received.connect
def _on_received(sender: Any, request: Any, **_: Any) -> None:
    credit = getattr(sender.app, "prompt_credit", None)
    if request.name != LLM_TASK or credit is None:
        return
    for forgotten in credit.take(request.id, prompts_in(request.args)):
        _credit_of_task.pop(forgotten, None)
    _credit_of_task[request.id] = (sender, credit)


def _release(task_id: str | None) -> None:
    owner = _credit_of_task.get(task_id) if task_id else None
    if owner is None or task_id is None:
        return
    consumer, credit = owner

    def give_back() -> None:
        credit.give_back(task_id)
        if not credit.holds(task_id):
            _credit_of_task.pop(task_id, None)

    credit.ending(task_id)
    if consumer.hub is not None:
        consumer.hub.call_soon(give_back)  # runs on the loop thread, and wakes it
    else:
        give_back()  # no event loop (solo pool): tasks run on the consumer's thread


@task_postrun.connect
def _on_postrun(sender: Any, task_id: str | None = None, **_: Any) -> None:
    if getattr(sender, "name", None) == LLM_TASK:
        _release(task_id)


@task_revoked.connect
def _on_revoked(request: Any = None, **_: Any) -> None:
    if request is not None and getattr(request, "name", None) == LLM_TASK:
        _release(getattr(request, "id", None))
