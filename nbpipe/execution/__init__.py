"""Running task notebooks: the task runner, executors and the scheduler.

- :mod:`.base`: the :class:`Executor` contract, task specs/results and app states.
- :mod:`.task`: :func:`run_task`, one task notebook through papermill.
- :mod:`.sync`: an in-process synchronous executor (tests, ``--debug``).
- :mod:`.local`: the embedded pool of worker processes of the ``local`` site.
- :mod:`.scheduler`: starts each app as soon as what it needs exists.
"""
