"""moto_server with its SQS queues made thread-safe and cheap per message.

``python -m cfncluster_node.motoserver -H 127.0.0.1 -p PORT`` (moto_server's arguments).
``localaws.MotoServer`` runs this, for the tests, the demo and the benchmarks, because of
defects of moto's SQS (checked in 5.2.5) that real SQS does not have:

1. ``receive_message`` costs O(messages in the queue, in flight included) *per message
   returned*: for each one, ``is_message_valid_based_on_retention_period`` builds every
   queue attribute, counts included. A receive of 10 costs ~30 ms with nothing in
   flight, ~145 ms with 100, ~1 s with 800. A consumer that deletes a message only once
   it has been applied (as it must) keeps messages in flight, so moto's CPU runs away.
   ``send_message`` builds them too (to read ``ContentBasedDeduplication``), once per
   message sent; that is left, but made ~10 times cheaper: every count reads the clock
   twice per message through datetime arithmetic, where ``time.time()`` is the same.
2. ``Queue.delete_message`` rebuilds the message list without the queue's lock, while
   ``add_message`` appends under it: a send during a delete can be lost, and two
   concurrent deletes can bring a deleted message back (it reappears after its
   visibility timeout).
3. ``receive_message`` is not locked either: concurrent receivers can each get the same
   message (about 1 in 200 with 4 receivers).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

from moto.core import utils
from moto.server import main
from moto.sqs import models
from moto.sqs.models import Message, Queue, SQSBackend


def _unix_time(dt: Any = None) -> float:
    return time.time() if dt is None else float(utils.unix_time(dt))


def _unix_time_millis(dt: Any = None) -> float:
    return _unix_time(dt) * 1000.0


def _retained(self: SQSBackend, queue_name: str, message: Message) -> bool:
    queue: Any = self.get_queue(queue_name)
    sent_ms: Any = message.sent_timestamp
    return bool(int(queue.message_retention_period) + sent_ms / 1000 > time.time())


def _locked_receive(receive: Any) -> Any:
    @functools.wraps(receive)
    def wrapper(self: SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        # The lock is re-entrant, and the long-poll wait inside releases it.
        with self.get_queue(queue_name)._messages_lock:
            return receive(self, queue_name, *args, **kwargs)

    return wrapper


def _locked_delete(delete: Any) -> Any:
    @functools.wraps(delete)
    def wrapper(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            delete(self, receipt_handle)

    return wrapper


def apply() -> None:
    # These are moto's internals: fail loudly if a new moto moved them.
    internals: tuple[tuple[Any, str], ...] = (
        (models, "unix_time"),
        (models, "unix_time_millis"),
        (SQSBackend, "is_message_valid_based_on_retention_period"),
        (SQSBackend, "receive_message"),
        (Queue, "delete_message"),
    )
    for owner, name in internals:
        if not hasattr(owner, name):
            raise RuntimeError(f"moto {owner.__name__}.{name} is gone: update motoserver.py")
    models.unix_time = _unix_time  # type: ignore[attr-defined]
    models.unix_time_millis = _unix_time_millis  # type: ignore[attr-defined]
    SQSBackend.is_message_valid_based_on_retention_period = _retained  # type: ignore[method-assign]
    SQSBackend.receive_message = _locked_receive(SQSBackend.receive_message)  # type: ignore[method-assign]
    Queue.delete_message = _locked_delete(Queue.delete_message)  # type: ignore[method-assign]


if __name__ == "__main__":
    apply()
    main(sys.argv[1:])
