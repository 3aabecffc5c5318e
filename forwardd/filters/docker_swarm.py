"""docker_swarm: Swarm's identity of a log line (service, task, slot or node), from docker's own record.

What docker's fluentd driver sends for a Swarm task's container (tests/data/wire-samples/clients/
dockerd-swarm-service.txt holds a real one): ``container_name`` is ``/<service>.<slot>.<task id>`` for a
replicated service and ``/<service>.<node id>.<task id>`` for a global one (moby's
``daemon/cluster/executor/container``: ``name()``); task and node ids are 25 characters of ``[0-9a-z]``.
With ``--log-opt labels=com.docker.swarm.service.name,com.docker.swarm.task.name,com.docker.swarm.task.id,
com.docker.swarm.node.id`` the driver adds those container labels, which Swarm sets on every task, to the
record. Labels are read first (they are what Swarm says); the container name fills what they lack, so the
filter works with no labels at all (then a replicated task's node is unknown).

Added fields (names configurable, ``null`` leaves one out): ``service``; ``task``, the task id (what
``docker inspect`` and ``docker service ps`` take); ``slot`` for a replicated service's task (a string, as
docker sends every value); ``node``, the node id, for a global service's task (its name carries it) and
for any task whose ``com.docker.swarm.node.id`` label was passed. A field the record already has is kept
unless ``overwrite``; ``remove_labels`` drops the ``com.docker.swarm.*`` labels once read.

Any record goes through: one that is not a Swarm task's (a plain container, another client's event,
values that are not strings) is left as it is, and a chunk where no record changes is returned itself, its
bytes untouched (a chunk that does not even contain ``container_name`` or a Swarm label is not decoded).
"""

from __future__ import annotations

import re
from typing import Any

from forwardd.model import Chunk, Event

__all__ = ["LABELS", "DockerSwarm", "swarm_identity"]

LABEL_PREFIX = "com.docker.swarm."
LABEL_SERVICE = "com.docker.swarm.service.name"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_NODE_ID = "com.docker.swarm.node.id"
#: The labels to pass with ``--log-opt labels=...`` (the filter works without them, knowing less).
LABELS = (LABEL_SERVICE, LABEL_TASK_NAME, LABEL_TASK_ID, LABEL_NODE_ID)

_ID = re.compile(r"[0-9a-z]{25}")
_SLOT = re.compile(r"[1-9][0-9]{0,9}")
#: Bytes that a chunk holds when any of its records can be a Swarm task's.
_MARKERS = (b"container_name", LABEL_PREFIX.encode())


def _text(value: Any) -> str | None:
    return value if type(value) is str and value else None


def _task_name(name: str) -> tuple[str, str | None, str | None, str] | None:
    """``(service, slot, node, task id)`` of a task's name, or None when it is not one."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3:
        return None
    service, middle, task = parts
    if not service or not _ID.fullmatch(task):
        return None
    if _SLOT.fullmatch(middle):
        return service, middle, None, task
    if _ID.fullmatch(middle):
        return service, None, middle, task
    return None


def swarm_identity(record: dict[Any, Any]) -> dict[str, str] | None:
    """``{"service", "task", "slot" | "node"}`` (as far as known) of a record docker sent for a Swarm
    task, or None when it is not one. Never raises, whatever the record holds."""
    service = _text(record.get(LABEL_SERVICE))
    task = _text(record.get(LABEL_TASK_ID))
    node = _text(record.get(LABEL_NODE_ID))
    slot = None
    parsed = None
    name = _text(record.get(LABEL_TASK_NAME))
    if name is not None:
        parsed = _task_name(name)
    if parsed is None:
        cname = _text(record.get("container_name"))
        if cname is not None:
            parsed = _task_name(cname[1:] if cname.startswith("/") else cname)
    if parsed is not None:
        p_service, p_slot, p_node, p_task = parsed
        service = service or p_service
        task = task or p_task
        slot = p_slot
        node = node or p_node
    if service is None and task is None:
        return None
    out: dict[str, str] = {}
    if service is not None:
        out["service"] = service
    if task is not None:
        out["task"] = task
    if slot is not None:
        out["slot"] = slot
    if node is not None:
        out["node"] = node
    return out


class DockerSwarm:
    """Add Swarm fields to docker's records; returns the chunk itself when no record changed."""

    __slots__ = ("_keys", "name", "overwrite", "remove_labels")

    def __init__(
        self,
        *,
        name: str = "docker_swarm",
        service_key: str | None = "service",
        task_key: str | None = "task",
        slot_key: str | None = "slot",
        node_key: str | None = "node",
        overwrite: bool = False,
        remove_labels: bool = False,
    ) -> None:
        keys = {"service": service_key, "task": task_key, "slot": slot_key, "node": node_key}
        for what, key in keys.items():
            if key is not None and not (isinstance(key, str) and key.strip()):
                raise ValueError(f"docker_swarm {what}_key must be a field name or null, got {key!r}")
        chosen = [k for k in keys.values() if k is not None]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"docker_swarm field names must differ, got {chosen}")
        if not chosen and not remove_labels:
            raise ValueError("docker_swarm with every field null and remove_labels off does nothing")
        self.name = name
        self._keys = {what: key for what, key in keys.items() if key is not None}
        self.overwrite = overwrite
        self.remove_labels = remove_labels

    def __call__(self, chunk: Chunk) -> Chunk:
        entries = chunk.entries
        if not any(m in entries for m in _MARKERS):
            return chunk
        events = chunk.events()
        out: list[Event] | None = None
        for i, ev in enumerate(events):
            rec = self._enrich(ev.record)
            if rec is None:
                if out is not None:
                    out.append(ev)
                continue
            if out is None:
                out = events[:i]
            out.append(Event(ev.time_ns, rec, ev.meta))
        return chunk if out is None else chunk.replace_events(out)

    def _enrich(self, record: Any) -> dict[Any, Any] | None:
        """The new record, or None when this one does not change (so nothing is copied)."""
        if type(record) is not dict:
            return None
        ident = swarm_identity(record)
        if ident is None:
            return None
        rec: dict[Any, Any] | None = None
        for what, key in self._keys.items():
            value = ident.get(what)
            if value is None or (key in record and (not self.overwrite or record[key] == value)):
                continue
            if rec is None:
                rec = dict(record)
            rec[key] = value
        if self.remove_labels:
            labels = [k for k in record if type(k) is str and k.startswith(LABEL_PREFIX)]
            if labels:
                if rec is None:
                    rec = dict(record)
                for k in labels:
                    if k not in self._keys.values():
                        del rec[k]
        return rec
