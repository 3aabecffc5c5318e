"""What a reload may change, and what changed: the running configuration against the one re-read.

Settings are frozen pydantic models, which compare by value, so each part is compared as a whole: a source
or an output is kept when its settings are equal, replaced when they differ, added or removed by name.
Routes and labels are always rebuilt (cheap); a stateful filter (docker_partial) that sits at the same place
with the same settings is kept, with what it holds.

Some settings cannot change while forwardd runs, because something built once at start depends on them;
a new file that changes one is refused (``config.reload_failed``), and the running configuration stays:

* ``storage`` (the lock and every queue live under it), ``workers`` (the processes are forked once),
  ``http_server`` (the parent serves it for all workers), ``log`` (configured before anything starts),
  ``shutdown_timeout`` (the parent's stop deadline is set once);
* an output's queue: ``buffer.type``, ``path``, ``fsync``, ``fsync_interval``, ``max_size``,
  ``segment_size``, ``when_full`` and ``compression`` (the queue stays open across a reload, so that
  nothing queued is written twice or waits); the rest of ``buffer`` (``retry``, ``dead_letter_path``)
  may change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forwardd.app.config import Config, OutputEntry
from forwardd.server.source import ForwardSource

__all__ = ["FIXED", "QUEUE_FIELDS", "ReloadPlan", "fixed_changes", "plan_reload"]

#: Top-level settings a reload cannot change (see the module doc).
FIXED = ("storage", "workers", "http_server", "log", "shutdown_timeout")
#: An output's buffer settings that shape its open queue (see the module doc).
QUEUE_FIELDS = (
    "type", "path", "fsync", "fsync_interval", "max_size", "segment_size", "when_full", "compression"
)  # fmt: skip


def _same_address(a: ForwardSource, b: ForwardSource) -> bool:
    """Whether the listener of ``b`` can take over the socket of ``a``'s."""
    if a.unix is not None or b.unix is not None:
        return a.unix is not None and b.unix is not None and a.unix.path == b.unix.path
    return a.bind == b.bind and a.port == b.port and a.port != 0


@dataclass
class ReloadPlan:
    """What a reload does, by name."""

    sources_added: list[str] = field(default_factory=list)
    sources_removed: list[str] = field(default_factory=list)
    #: Changed sources whose new listener takes over the old one's socket (same address).
    sources_taken_over: list[str] = field(default_factory=list)
    #: Changed sources at a new address: the new listener binds first, then the old one stops.
    sources_moved: list[str] = field(default_factory=list)
    #: New source name -> the old source whose listening socket it takes (same address).
    take_over: dict[str, str] = field(default_factory=dict)
    outputs_added: list[str] = field(default_factory=list)
    outputs_removed: list[str] = field(default_factory=list)
    #: Outputs whose settings changed: a new output over the same open queue.
    outputs_rebuilt: list[str] = field(default_factory=list)
    routes_changed: bool = False

    @property
    def changed(self) -> bool:
        return any(
            (
                self.sources_added,
                self.sources_removed,
                self.sources_taken_over,
                self.sources_moved,
                self.outputs_added,
                self.outputs_removed,
                self.outputs_rebuilt,
                self.routes_changed,
            )
        )

    def as_dict(self) -> dict[str, object]:
        """For the ``config.reloaded`` log line: only what changed."""
        out: dict[str, object] = {
            k: v
            for k, v in {
                "sources_added": self.sources_added,
                "sources_removed": self.sources_removed,
                "sources_replaced": sorted(self.sources_taken_over + self.sources_moved),
                "outputs_added": self.outputs_added,
                "outputs_removed": self.outputs_removed,
                "outputs_rebuilt": self.outputs_rebuilt,
            }.items()
            if v
        }
        if self.routes_changed:
            out["routes_changed"] = True
        if not out:
            out["unchanged"] = True
        return out


def _queue_changes(name: str, old: OutputEntry, new: OutputEntry) -> list[str]:
    before, after = old.buffer, new.buffer
    return [
        f"outputs.{name}.buffer.{key}: {getattr(before, key)!r} -> {getattr(after, key)!r}"
        for key in QUEUE_FIELDS
        if getattr(before, key) != getattr(after, key)
    ]


def fixed_changes(old: Config, new: Config) -> list[str]:
    """What the new configuration changes that a reload cannot (one sentence each); empty when none."""
    problems = [
        f"{key}: {getattr(old, key)!r} -> {getattr(new, key)!r}"
        for key in FIXED
        if getattr(old, key) != getattr(new, key)
    ]
    for name, entry in new.outputs.items():
        if name in old.outputs:
            problems.extend(_queue_changes(name, old.outputs[name], entry))
    if new.workers > 1:
        shared = [s.name for s in new.sources if s.unix is not None or s.port == 0]
        if shared:
            problems.append(
                f"workers: {new.workers} needs a fixed TCP port on every source; not possible for "
                f"source(s) {', '.join(shared)} (a Unix socket or port 0)"
            )
    return problems


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What changes from ``old`` to ``new`` (which :func:`fixed_changes` found nothing against)."""
    plan = ReloadPlan()
    before = {s.name: s for s in old.sources}
    after = {s.name: s for s in new.sources}
    for name, src in after.items():
        was = before.get(name)
        if was is None:
            plan.sources_added.append(name)
        elif was != src:
            (plan.sources_taken_over if _same_address(was, src) else plan.sources_moved).append(name)
    plan.sources_removed = [name for name in before if name not in after]
    plan.take_over = {name: name for name in plan.sources_taken_over}
    for name in plan.sources_added:  # a source renamed, or another one on a removed source's address
        for gone in plan.sources_removed:
            if gone not in plan.take_over.values() and _same_address(before[gone], after[name]):
                plan.take_over[name] = gone
                break
    for name, entry in new.outputs.items():
        was_entry = old.outputs.get(name)
        if was_entry is None:
            plan.outputs_added.append(name)
        elif was_entry != entry:
            plan.outputs_rebuilt.append(name)
    plan.outputs_removed = [name for name in old.outputs if name not in new.outputs]
    plan.routes_changed = old.routes != new.routes or old.labels != new.labels
    return plan
