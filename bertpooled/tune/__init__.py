"""Tuning: an Optuna study per mode over a search space (`space`), each trial a child run (`trials`), the study and
its parent run (`study`). One floor above `run/` (a trial is one run's training) and beside `sweep/`, whose
executors and signal handling it uses."""
