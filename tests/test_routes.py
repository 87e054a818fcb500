"""Issue 30's routes, followed while they run (benchmarks/redesign/routes.py on its own tiny BERT and IMDB): a run's
work never climbs back into a module it has left, and the training loop never calls back into the orchestration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import bertpooled

ROUTES_SCRIPT = Path(bertpooled.__file__).resolve().parents[1] / "benchmarks" / "redesign" / "routes.py"


def test_no_route_comes_back_into_a_module_it_left(store, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("routes_under_test", ROUTES_SCRIPT)
    assert spec is not None and spec.loader is not None
    routes = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, routes)  # its dataclasses look their module up there
    spec.loader.exec_module(routes)

    followed = routes.run_routes(tmp_path)

    assert set(followed) == {"train_and_evaluate", "prepared", "sweep child", "seed-group child"}
    assert {name: sorted(route.bounces) for name, route in followed.items()} == {name: [] for name in followed}
    # Each epoch's report and checkpoint go from the loop to the sink, not through run/experiment.py.
    assert "run/experiment.py" not in followed["train_and_evaluate"].files
    assert {"run/fit.py", "run/prepare.py", "tracking/sink.py"} <= followed["train_and_evaluate"].files
    # The seed group trained in the one loop (run/fit.py, model/grouped.py's network), planned and scheduled by
    # sweep/groups.py, which its training never calls back into.
    group = followed["seed-group child"]
    assert {"run/fit.py", "run/grouped.py", "model/grouped.py", "sweep/groups.py"} <= group.files
    into_sweep = [caller for caller, callee in group.hops if callee.startswith("sweep/")]
    assert into_sweep and all(caller.startswith("sweep/") for caller in into_sweep)
