"""The row status names, in one place: every manifest row ends as exactly one of them."""

#: A row the stages rendered (and the sink wrote), or found in the store.
STATUS_OK = "ok"
#: A row a stage or the sink could not make; the lineage names the stage and the error.
STATUS_FAILED = "failed"
#: A row that was not valid work: the rejects table names its field and the reason.
STATUS_REJECTED = "rejected"
#: A row whose asset was found in the store before rendering; lineage records it as ``ok``.
STATUS_EXISTS = "exists"
#: A row the budget left for a later run (``factory.cost.budget``).
STATUS_DEFERRED = "deferred"
#: A valid row still to render, as the work list's first pass hands it to the driver
#: (``factory.run.work``): it is counted and read again, never recorded.
STATUS_TO_RENDER = "to_render"
