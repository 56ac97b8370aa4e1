"""Publishing a run right after its commit, when its job has ``publish:`` (``factory.publish``).

The commit stands whatever the publish does: a publish that fails is logged and recorded in the
run's result (``RunResult.publish_error``), never a reason to call the committed run failed;
``factory publish RUN`` publishes it again later.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from factory.publish.publisher import publish_run
from factory.run.result import RunResult
from factory.spec.job import Job
from factory.store.storage import Store

log = logging.getLogger(__name__)


def publish_committed(job: Job, store: Store, result: RunResult) -> RunResult:
    """``result`` with the paths ``job.publish`` wrote for its run, or the reason it could not."""
    assert job.publish is not None
    try:
        published = publish_run(store, result.run_id, job.publish)
    except Exception as exc:  # noqa: BLE001 - the run is committed either way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("run %s is committed, but its publish failed: %s; `factory publish %s "
                    "--output %s` tries again", result.run_id, reason, result.run_id,
                    store.uri)
        return replace(result, publish_error=reason)
    return replace(result, published=published.paths,
                   publish_warnings=published.warnings)
