"""The simulator: replays time through the operator's own decision code.

- ``sim.shifting``   TrainingJobs: ``PlanBoard`` + ``decide()`` tick by tick (policy
  ``greenml``), plus sim-only baselines (run-now, threshold, best-window, lwa, oracle).
- ``sim.forecasts``  forecasts as issued at ``now`` (perfect, noisy, snapshots, builtin).
- ``sim.jobs``       jobs, results, CSV readers and emission accounting.
- ``sim.scenario``   the default scenario behind ``greenml simulate``.
- ``sim.plot``       a self-contained HTML/SVG picture of a run.
"""
