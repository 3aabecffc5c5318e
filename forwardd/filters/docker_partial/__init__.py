"""docker_partial: put back together the lines docker splits at 16 KiB.

Docker's log copier cuts a line longer than 16 KiB into pieces, and its fluentd driver sends each piece as
its own message carrying ``partial_message: "true"``, ``partial_id``, ``partial_ordinal`` ("1".."n") and
``partial_last`` ("true" on the last), all strings. This filter holds the pieces of a line, keyed by
(tag, ``container_id``, ``partial_id``) so that lines of many containers can interleave, and emits one event
when the last piece is in and every ordinal 1..n is present: the ``log`` values joined in ordinal order, the
other fields and the time of piece 1, the ``partial_*`` fields removed. The joined event takes the place of
the piece that completed it; events that are not pieces pass untouched and keep their order. A piece seen
twice (a client resending after a lost ack) is dropped and counted in :attr:`DockerPartial.duplicates`.

Older engines (moby before 18.06) set only ``partial_message: "true"``: their pieces are concatenated per
(tag, ``container_id``) until the next record of that container *without* the flag, which ends the line.

Nothing is held without bound. A line open for ``flush_timeout`` seconds (from its first piece), a line
evicted because more than ``max_pending`` lines are open (oldest first), and whatever is held at
:meth:`DockerPartial.drain` are emitted as they are: the pieces held, joined in ordinal order, with
``partial_id`` kept (to match fragments up) and ``partial_incomplete: "true"`` added. A line whose joined
``log`` would pass ``max_size`` bytes is emitted in segments of at most ``max_size`` (plus one piece), each
flagged the same way, so a runaway line costs bounded memory. Pieces that come after their line was flushed
start a new fragment, flagged again; data is never dropped, only delivered in more than one event.
Timed-out and evicted lines of other tags are handed out by :meth:`DockerPartial.expire`.

Acks: the pieces held here have already been acked to docker. Docker waits for each ack before it sends
the next piece, so holding an ack until the line completes would deadlock the driver. So that an acked
piece survives a crash, the daemon gives the filter a :class:`~forwardd.filters.base.Journal`
(``journal: true``, the default; a disk queue under ``<storage>/journal/``): once :meth:`DockerPartial.start`
has recovered it, every chunk of pieces is committed to it before its ack, a journal entry is released once
all the lines it holds pieces of were emitted and accepted by the sinks, and on start the pieces still in
it are held again, so a line cut by a restart completes when docker sends the rest. At shutdown the open
lines then stay in the journal instead of being flushed as fragments; so do they on a reload that puts a
docker_partial at the same place (the journal is the place's: the new filter holds them again), while a
reload that removes the filter or moves it elsewhere flushes them, since no filter would read that journal
again. Without a journal (``journal: false``, or the filter used on its own) held pieces live only in
memory.

The package is split by role: :mod:`~forwardd.filters.docker_partial.filter` (the filter: reassembly, its
settings and stats), :mod:`~forwardd.filters.docker_partial.journaling` (what it keeps in its journal, and
recovers), :mod:`~forwardd.filters.docker_partial.line` (one line's pieces, the record's ``partial_*``
fields).
"""

from forwardd.filters.docker_partial.filter import DockerPartial, DockerPartialSettings, DockerPartialStats

__all__ = ["DockerPartial", "DockerPartialSettings", "DockerPartialStats"]
