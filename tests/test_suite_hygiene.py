"""The suite leaves the checkout as it found it (.ci/run compares `git status --ignored` before and after)."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# A process started in the checkout's folder that creates an experiment keeps its artifacts in ./mlruns there
# (MLflow's default artifact location). These may: `mlflow_run` makes the experiments first, with their artifacts
# beside the test's store; the GPU script's stages run from the repository root as on the device and write only
# under its OUT and git-ignored payload folders; the deadlines test's process hangs on a silent port and writes
# nothing.
ALLOWED = {"conftest.py": 1, "test_gpu_script.py": 3, "test_deadlines.py": 1}
IN_THE_CHECKOUT = re.compile(r"cwd=(?:str\()?ROOT\b")


def test_no_test_starts_a_process_in_the_checkouts_folder():
    found = {
        p.name: len(IN_THE_CHECKOUT.findall(p.read_text())) for p in sorted(TESTS.glob("*.py")) if p != Path(__file__)
    }
    assert {name: n for name, n in found.items() if n} == ALLOWED, "start it in tmp_path (see test_fencing.py)"
