"""The ``factory`` command's exit codes: one table, shared by every command group.

A Ray job reports its entrypoint's exit code (``factory status`` shows it), so these values are
an interface: a scheduler or a script tells a partial run from a run that did not finish by them.
"""

from __future__ import annotations

#: Every row became an asset (or a training finished, or was found finished).
EXIT_OK = 0
#: The run committed, but some rows failed, were rejected or were deferred by a budget, or
#: its ``publish:`` failed after the commit.
EXIT_PARTIAL = 1
#: A bad job spec or bad usage (an explicit run id already committed from other inputs, a
#: local output on a multi-node Ray, a bad training spec included); nothing started.
EXIT_SPEC = 2
#: A manifest that cannot be read at all.
EXIT_MANIFEST = 3
#: The run (or training) could not finish: a model that does not load, storage, Ray; nothing
#: was committed.
EXIT_RUN = 4
#: No such committed run (``factory runs show``, ``factory publish``).
EXIT_NO_RUN = 5
