"""moto_server with SQS made thread-safe and cheap per message, and CloudFormation signals.

``python -m cfncluster_node.local.motoserver -H 127.0.0.1 -p PORT`` (moto_server's arguments).
``cloud.MotoServer`` runs this, for the tests, the demo and the benchmarks, because of
defects of moto's SQS (checked in 5.2.5) that real SQS does not have:

1. ``receive_message`` costs O(messages in the queue, in flight included) *per message
   returned*: for each one, ``is_message_valid_based_on_retention_period`` builds every
   queue attribute, counts included. A receive of 10 costs ~30 ms with nothing in
   flight, ~145 ms with 100, ~1 s with 800. A consumer that deletes a message only once
   it has been applied (as it must) keeps messages in flight, so moto's CPU runs away.
   ``send_message`` builds them too, once per message sent, only to read
   ``ContentBasedDeduplication``, which a standard queue does not have: a send to a
   dead-letter queue holding a flood's 10,000 messages took ~1 s. Here a send finds
   a standard queue's attributes empty, and every other caller gets them all, their
   counts ~10 times cheaper (each read the clock twice per message through datetime
   arithmetic, where ``time.time()`` is the same).
2. ``Queue.delete_message`` rebuilds the message list without the queue's lock, while
   ``add_message`` appends under it: a send during a delete can be lost, and two
   concurrent deletes can bring a deleted message back (it reappears after its
   visibility timeout).
3. ``receive_message`` is not locked either: concurrent receivers can each get the same
   message (about 1 in 200 with 4 receivers).

and because moto's CloudFormation (5.2.5 too) ignores creation policies, which a launcher
waiting for its head node relies on:

4. A resource with ``CreationPolicy: {ResourceSignal: {Count, Timeout}}`` is complete at
   once, and ``SignalResource`` answers 500 NotImplemented. Here such a resource (still
   created at once by moto) keeps its stack ``CREATE_IN_PROGRESS`` until it has Count
   SUCCESS signals of distinct UniqueIds, with CloudFormation's resource events. A FAILURE
   signal, or a Timeout passed when the stack is next described (moto has no clock of its
   own), fails the creation as ``OnFailure`` / ``DisableRollback`` says, which moto's
   ``CreateStack`` ignores: ``CREATE_FAILED``, ``ROLLBACK_COMPLETE`` or deleted.

and because moto's CloudFormation has no ``AWS::SecretsManager::Secret``, which holds the
cluster's munge key:

5. ``_StackSecret`` creates the secret in moto's Secrets Manager, from its
   ``SecretString`` or its ``GenerateSecretString``, and deletes it with its stack (at
   once, as a stack deletion without a recovery window does).

and because moto's SQS gives every message the same ``SenderId``, the one AWS gives what
SNS delivers, while the head node trusts a message by its sender (node/trust.py):

6. A message sent through the SQS API carries its caller's id, as AWS reports it: an IAM
   user's id, or ``<role id>:<session name>`` for assumed-role credentials (an
   instance's role session is named after the instance). What SNS delivers keeps moto's
   default, which is SNS's.

and because moto's EC2 never frees a terminated instance's private address, while EC2
gives it to the next instance, the case the head node's hostname ownership is built for:

7. ``Instance.terminate`` releases the instance's private addresses in its subnet.

and because moto's S3 ignores ``ExpectedBucketOwner``, on which the launcher relies to
never upload a template into someone else's bucket of the predictable name:

8. A bucket or object request whose ``x-amz-expected-bucket-owner`` is not the bucket's
   account is refused with S3's 403 AccessDenied.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from moto.cloudformation.exceptions import ValidationError
from moto.cloudformation.models import CloudFormationBackend, Event, Stack
from moto.cloudformation.parsing import clean_json
from moto.cloudformation.responses import CloudFormationResponse
from moto.core import utils
from moto.core.common_models import CloudFormationModel
from moto.core.responses import EmptyResult
from moto.ec2.models.instances import Instance
from moto.s3.models import s3_backends
from moto.s3.responses import S3Response
from moto.secretsmanager.models import secretsmanager_backends
from moto.server import main
from moto.sqs import models
from moto.sqs.models import DEFAULT_SENDER_ID, Message, Queue, SQSBackend
from moto.sqs.responses import SQSResponse
from moto.sts.models import sts_backends
from moto.utilities.utils import get_partition


def _unix_time(dt: Any = None) -> float:
    return time.time() if dt is None else float(utils.unix_time(dt))


def _unix_time_millis(dt: Any = None) -> float:
    return _unix_time(dt) * 1000.0


def _retained(self: SQSBackend, queue_name: str, message: Message) -> bool:
    queue: Any = self.get_queue(queue_name)
    sent_ms: Any = message.sent_timestamp
    return bool(int(queue.message_retention_period) + sent_ms / 1000 > time.time())


def _sending(send: Any) -> Any:
    @functools.wraps(send)
    def wrapper(self: SQSBackend, *args: Any, **kwargs: Any) -> Any:
        _caller.sending = True
        try:
            return send(self, *args, **kwargs)
        finally:
            _caller.sending = False

    return wrapper


def _attributes(built: Any) -> property:
    def attributes(self: Queue) -> dict[str, Any]:
        if getattr(_caller, "sending", False) and not self.fifo_queue:
            return {}  # all a send reads is ContentBasedDeduplication, FIFO queues' alone
        attributes: dict[str, Any] = built(self)
        return attributes

    return property(attributes)


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


@dataclass
class _Awaited:
    """The SUCCESS signals one resource's creation policy still waits for."""

    count: int
    deadline: float  # time.monotonic()
    unique_ids: set[str] = field(default_factory=set)


@dataclass
class _Creation:
    """A stack whose creation waits for signals; dropped once it completes or fails."""

    awaited: dict[str, _Awaited]  # by logical id, in template order
    on_failure: str = "ROLLBACK"


# moto's server is threaded: signals, reads (which expire timeouts) and creations race.
_lock = threading.RLock()
_creations: weakref.WeakKeyDictionary[Stack, _Creation] = weakref.WeakKeyDictionary()
_DURATION = re.compile(r"PT(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?")


def _policy(resource_signal: dict[str, Any], stack: Stack) -> _Awaited:
    # Count and Timeout may be Refs to parameters.
    policy = clean_json(resource_signal, stack.resource_map)
    timeout = str(policy.get("Timeout", "PT5M"))
    duration = _DURATION.fullmatch(timeout)
    if duration is None:
        raise ValidationError(message=f"Invalid ResourceSignal Timeout {timeout}")
    hours, minutes, seconds = (int(part or 0) for part in duration.groups())
    seconds += 60 * (minutes + 60 * hours)
    return _Awaited(int(policy.get("Count", 1)), time.monotonic() + seconds)


def _resource_event(stack: Stack, logical_id: str, status: str, reason: str | None = None) -> None:
    # Only ever called while the resource exists: resource_map would create it again.
    event = Event(
        stack_id=stack.stack_id,
        stack_name=stack.name,
        logical_resource_id=logical_id,
        physical_resource_id=getattr(stack.resource_map[logical_id], "physical_resource_id", ""),
        resource_type=stack.template_dict["Resources"][logical_id]["Type"],
        resource_status=status,
        resource_status_reason=reason,
        resource_properties=None,
    )
    event.sendToSns(stack.account_id, stack.region_name, stack.notification_arns)
    stack.events.append(event)


def _fail(backend: CloudFormationBackend, stack: Stack, logical_id: str, reason: str) -> None:
    """Fail the stack's creation, as CloudFormation does when ``logical_id`` failed."""
    creation = _creations.pop(stack)
    _resource_event(stack, logical_id, "CREATE_FAILED", reason)
    for other in creation.awaited:
        if other != logical_id:
            _resource_event(stack, other, "CREATE_FAILED", "Resource creation cancelled")
    failed = f"The following resource(s) failed to create: [{logical_id}]. "
    if creation.on_failure == "DELETE":
        backend.delete_stack(stack.stack_id)
    elif creation.on_failure == "DO_NOTHING":
        stack.status = "CREATE_FAILED"
        stack._add_stack_event("CREATE_FAILED", failed)
    else:
        stack.status = "ROLLBACK_IN_PROGRESS"
        stack._add_stack_event("ROLLBACK_IN_PROGRESS", failed + "Rollback requested by user.")
        stack.resource_map.delete()  # Retain honoured
        stack.status = "ROLLBACK_COMPLETE"
        stack._add_stack_event("ROLLBACK_COMPLETE")


def _expire(backend: CloudFormationBackend) -> None:
    """Fail the creations of ``backend`` that waited for signals past their Timeout."""
    now = time.monotonic()
    with _lock:
        for stack in list(backend.stacks.values()):
            creation = _creations.get(stack)
            for logical_id, awaited in creation.awaited.items() if creation else ():
                if awaited.deadline <= now:
                    reason = (
                        f"Failed to receive {awaited.count - len(awaited.unique_ids)}"
                        " resource signal(s) within the specified duration"
                    )
                    _fail(backend, stack, logical_id, reason)
                    break


def _expiring(read: Any) -> Any:
    @functools.wraps(read)
    def wrapper(self: CloudFormationBackend, *args: Any, **kwargs: Any) -> Any:
        _expire(self)
        return read(self, *args, **kwargs)

    return wrapper


def _awaiting_signals(create: Any) -> Any:
    @functools.wraps(create)
    def wrapper(self: Stack) -> None:
        awaited = {
            logical_id: _policy(resource["CreationPolicy"]["ResourceSignal"], self)
            for logical_id, resource in self.template_dict["Resources"].items()
            if "ResourceSignal" in resource.get("CreationPolicy", {})
        }
        if not awaited:
            create(self)
            return
        with _lock:
            _creations[self] = _Creation(awaited)
            create(self)  # completes nothing: _complete_once_signaled
            for logical_id in awaited:
                reason = "Resource creation Initiated"
                _resource_event(self, logical_id, "CREATE_IN_PROGRESS", reason)

    return wrapper


def _complete_once_signaled(mark: Any) -> Any:
    @functools.wraps(mark)
    def wrapper(self: Stack) -> None:
        # moto calls this once its resources exist; the signals may still be awaited.
        with _lock:
            if self not in _creations:
                mark(self)

    return wrapper


def _recording_on_failure(create: Any) -> Any:
    @functools.wraps(create)
    def wrapper(self: CloudFormationResponse) -> Any:
        disable_rollback = self._get_bool_param("DisableRollback", False)
        on_failure = self._get_param("OnFailure") or (
            "DO_NOTHING" if disable_rollback else "ROLLBACK"
        )
        # Held throughout, so that no signal fails the stack before this is recorded.
        with _lock:
            result = create(self)
            stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
            stack.disable_rollback = on_failure == "DO_NOTHING"
            if stack in _creations:
                _creations[stack].on_failure = on_failure
        return result

    return wrapper


def _signal_resource(self: CloudFormationResponse) -> EmptyResult:
    backend = self.cloudformation_backend
    logical_id = self._get_param("LogicalResourceId")
    unique_id = self._get_param("UniqueId")
    with _lock:
        _expire(backend)  # a late signal finds the stack failed, as it would be
        stack = backend.get_stack(self._get_param("StackName"))
        if stack.status != "CREATE_IN_PROGRESS":
            raise ValidationError(
                message=f"Stack {stack.stack_id} is in {stack.status} state and cannot be signaled"
            )
        if logical_id not in stack.template_dict["Resources"]:
            raise ValidationError(
                message=f"Resource {logical_id} does not exist for stack {stack.name}"
            )
        creation = _creations.get(stack)
        awaited = creation.awaited.get(logical_id) if creation else None
        if creation is None or awaited is None:
            raise ValidationError(
                message=f"Resource {logical_id} in stack {stack.stack_id} is in CREATE_COMPLETE"
                " state and cannot be signaled"
            )
        if self._get_param("Status") == "FAILURE":
            _fail(backend, stack, logical_id, f"Received FAILURE signal with UniqueId {unique_id}")
        elif unique_id not in awaited.unique_ids:
            awaited.unique_ids.add(unique_id)
            reason = f"Received SUCCESS signal with UniqueId {unique_id}"
            _resource_event(stack, logical_id, "CREATE_IN_PROGRESS", reason)
            if len(awaited.unique_ids) >= awaited.count:
                del creation.awaited[logical_id]
                _resource_event(stack, logical_id, "CREATE_COMPLETE")
                if not creation.awaited:
                    del _creations[stack]
                    stack.verify_readiness()  # moto's own test, then mark_creation_complete
    return EmptyResult()


# The caller of the SQS request this thread serves (moto's server runs one per request);
# unset while SNS delivers, which sends to the queue from its own request.
_caller = threading.local()


def _sent_by_caller(send: Any) -> Any:
    @functools.wraps(send)
    def wrapper(self: SQSResponse) -> Any:
        partition = get_partition(self.region)
        sts = sts_backends[self.current_account][partition]
        _caller.sender_id = sts.get_caller_identity(self.get_access_key(), self.region)[0]
        try:
            return send(self)
        finally:
            _caller.sender_id = None

    return wrapper


def _with_sender(init: Any) -> Any:
    @functools.wraps(init)
    def wrapper(self: Message, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.sender_id = getattr(_caller, "sender_id", None) or DEFAULT_SENDER_ID

    return wrapper


def _releasing_addresses(terminate: Any) -> Any:
    @functools.wraps(terminate)
    def wrapper(self: Instance) -> Any:
        state = terminate(self)
        if self.subnet_id:
            subnet = self.ec2_backend.get_subnet(self.subnet_id)
            for address in self._private_ips:
                subnet.del_subnet_ip(address)
        return state

    return wrapper


_ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
)


def _owned_as_expected(respond: Any) -> Any:
    @functools.wraps(respond)
    def wrapper(self: S3Response, request: Any, full_url: str) -> Any:
        expected = request.headers.get("x-amz-expected-bucket-owner")
        owner = s3_backends.bucket_accounts.get(self.parse_bucket_name_from_url(request, full_url))
        if expected and owner is not None and owner[1] != expected:
            return 403, {"content-type": "application/xml"}, _ACCESS_DENIED
        return respond(self, request, full_url)

    return wrapper


class _StackSecret(CloudFormationModel):
    """AWS::SecretsManager::Secret: its Ref is the secret's ARN, as on AWS."""

    # moto files every model under the service its module names (moto.SERVICE.models):
    # this one is Secrets Manager's, whatever module defines it (here, __main__).
    __module__ = "moto.secretsmanager.models"

    def __init__(self, arn: str, account_id: str, region_name: str) -> None:
        self.arn = arn
        self._account_id = account_id
        self._region_name = region_name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SecretsManager::Secret"

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Id"

    def get_cfn_attribute(self, attribute_name: str) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> _StackSecret:
        properties = cloudformation_json.get("Properties", {})
        backend = secretsmanager_backends[account_id][region_name]
        value = properties.get("SecretString")
        if value is None:
            generate = properties.get("GenerateSecretString", {})
            value = json.loads(
                backend.get_random_password(
                    password_length=int(generate.get("PasswordLength", 32)),
                    exclude_characters=generate.get("ExcludeCharacters", ""),
                    exclude_numbers=bool(generate.get("ExcludeNumbers", False)),
                    exclude_punctuation=bool(generate.get("ExcludePunctuation", False)),
                    exclude_uppercase=bool(generate.get("ExcludeUppercase", False)),
                    exclude_lowercase=bool(generate.get("ExcludeLowercase", False)),
                    include_space=bool(generate.get("IncludeSpace", False)),
                    require_each_included_type=True,
                )
            )["RandomPassword"]
        created = backend.create_secret(
            name=properties.get("Name", resource_name),
            secret_string=value,
            secret_binary=None,
            description=properties.get("Description"),
            tags=properties.get("Tags"),
            kms_key_id=properties.get("KmsKeyId"),
            client_request_token=None,
            replica_regions=[],
            force_overwrite=False,
        )
        return cls(json.loads(created)["ARN"], account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(
        cls,
        original_resource: _StackSecret,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> _StackSecret:
        return original_resource  # the key a cluster runs with never changes under it

    @classmethod
    def delete_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> None:
        backend = secretsmanager_backends[account_id][region_name]
        backend.delete_secret(resource_name, None, True)

    def delete(self, account_id: str, region_name: str) -> None:
        secretsmanager_backends[account_id][region_name].delete_secret(self.arn, None, True)

    def is_created(self) -> bool:
        return True


def apply() -> None:
    # These are moto's internals: fail loudly if a new moto moved them.
    internals: tuple[tuple[Any, str], ...] = (
        (models, "unix_time"),
        (models, "unix_time_millis"),
        (SQSBackend, "is_message_valid_based_on_retention_period"),
        (SQSBackend, "receive_message"),
        (SQSBackend, "send_message"),
        (Queue, "attributes"),
        (Queue, "delete_message"),
        (Stack, "create_resources"),
        (Stack, "mark_creation_complete"),
        (Stack, "verify_readiness"),
        (Stack, "_add_stack_event"),
        (CloudFormationBackend, "describe_stacks"),
        (CloudFormationBackend, "describe_stack_events"),
        (CloudFormationResponse, "create_stack"),
        (Instance, "terminate"),
        (S3Response, "_bucket_response"),
        (S3Response, "_key_response"),
        (SQSResponse, "send_message"),
        (SQSResponse, "send_message_batch"),
    )
    for owner, name in internals:
        if not hasattr(owner, name):
            raise RuntimeError(f"moto {owner.__name__}.{name} is gone: update motoserver.py")
    if hasattr(CloudFormationResponse, "signal_resource"):
        raise RuntimeError("moto implements SignalResource now: update motoserver.py")
    models.unix_time = _unix_time  # type: ignore[attr-defined]
    models.unix_time_millis = _unix_time_millis  # type: ignore[attr-defined]
    SQSBackend.is_message_valid_based_on_retention_period = _retained  # type: ignore[method-assign]
    SQSBackend.receive_message = _locked_receive(SQSBackend.receive_message)  # type: ignore[method-assign]
    SQSBackend.send_message = _sending(SQSBackend.send_message)  # type: ignore[method-assign]
    Queue.attributes = _attributes(Queue.__dict__["attributes"].fget)  # type: ignore[method-assign,assignment]
    Queue.delete_message = _locked_delete(Queue.delete_message)  # type: ignore[method-assign]
    Stack.create_resources = _awaiting_signals(Stack.create_resources)  # type: ignore[method-assign]
    Stack.mark_creation_complete = _complete_once_signaled(Stack.mark_creation_complete)  # type: ignore[method-assign]
    backend, response = CloudFormationBackend, CloudFormationResponse
    backend.describe_stacks = _expiring(backend.describe_stacks)  # type: ignore[method-assign]
    backend.describe_stack_events = _expiring(backend.describe_stack_events)  # type: ignore[method-assign]
    response.create_stack = _recording_on_failure(response.create_stack)  # type: ignore[method-assign]
    response.signal_resource = _signal_resource  # type: ignore[attr-defined]
    SQSResponse.send_message = _sent_by_caller(SQSResponse.send_message)  # type: ignore[method-assign]
    SQSResponse.send_message_batch = _sent_by_caller(SQSResponse.send_message_batch)  # type: ignore[method-assign]
    Message.__init__ = _with_sender(Message.__init__)  # type: ignore[method-assign]
    Instance.terminate = _releasing_addresses(Instance.terminate)  # type: ignore[method-assign]
    S3Response._bucket_response = _owned_as_expected(S3Response._bucket_response)  # type: ignore[method-assign]
    S3Response._key_response = _owned_as_expected(S3Response._key_response)  # type: ignore[method-assign]


if __name__ == "__main__":
    apply()
    main(sys.argv[1:])
