"""Sweeps: a grid of configs run as MLflow child runs of one parent run, resumable, wherever an executor runs them.

`plan` resolves the grid (children, their keys), `resume` decides what an earlier sweep left to do (the one rule
for which earlier run of a child continues), `runner` owns the parent run, and an `executor.Executor` runs the
children: here one by one (`executor.LocalExecutor`, seed groups with `groups`), side by side in processes
(`parallel`), or as Ray tasks (`ray_executor`). One floor above `run/`, whose one-run modules it drives.
"""
