"""The one rule for which earlier run of a sweep's child a resumed sweep continues (bertpooled.sweep.resume), read
the same way by every executor: the driver before any child runs, and a Ray task that Ray retried."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bertpooled.sweep import resume
from bertpooled.sweep.plan import Child


def run(run_id: str, status: str, epoch: int | None = None, start: int = 0):
    tags = {} if epoch is None else {"checkpoint/epoch": str(epoch)}
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status=status, start_time=start), data=SimpleNamespace(tags=tags, params={})
    )


def ids(runs) -> list[str]:
    return sorted(r.info.run_id for r in runs)


def test_a_finished_run_makes_the_child_done_and_nothing_else_is_touched():
    earlier = resume.earlier_runs([run("a", "KILLED", 3), run("b", "FINISHED"), run("c", "RUNNING")])
    assert earlier.finished.info.run_id == "b" and earlier.resume is None and earlier.orphans == []


@pytest.mark.parametrize("order", [0, 1])
def test_the_unfinished_run_with_the_most_progress_continues_whatever_the_search_order(order):
    runs = [run("early", "KILLED", 2, start=2), run("late", "KILLED", 1, start=3), run("none", "FAILED", start=1)]
    earlier = resume.earlier_runs(runs if order else runs[::-1])
    assert earlier.resume.info.run_id == "early"  # the first-found (sweep.py) and the newest would have lost epoch 2
    assert ids(earlier.others) == ["late", "none"] and earlier.orphans == []


def test_among_equal_progress_the_latest_started_run_continues():
    earlier = resume.earlier_runs([run("old", "KILLED", 2, start=1), run("new", "FAILED", 2, start=5)])
    assert earlier.resume.info.run_id == "new"


def test_runs_left_running_that_are_not_continued_are_orphans_ended_failed(monkeypatch):
    ended = []
    monkeypatch.setattr(resume.sweeps, "end_child", lambda run_id, status, why: ended.append((run_id, status, why)))
    runs = [run("lost", "RUNNING"), run("ahead", "RUNNING", 3), run("behind", "RUNNING", 1), run("k", "KILLED")]
    earlier = resume.earlier_runs(runs)
    assert earlier.resume.info.run_id == "ahead" and ids(earlier.orphans) == ["behind", "lost"]
    assert resume.end_orphans(earlier) == ["lost", "behind"]
    assert [(r, s) for r, s, _ in ended] == [("lost", "FAILED"), ("behind", "FAILED")]
    assert "before its first checkpoint" in ended[0][2] and "run ahead continues" in ended[1][2]


def test_no_earlier_run_starts_the_child_afresh():
    assert resume.earlier_runs([]) == resume.Earlier()


def test_what_to_run_applies_the_rule_to_every_child(monkeypatch):
    monkeypatch.setattr(resume.sweeps, "end_child", lambda *args: None)
    cell = lambda key: Child(config=None, key=key, label=key)  # noqa: E731
    children = [cell("done"), cell("resume"), cell("fresh")]
    existing = {"done": [run("d", "FINISHED")], "resume": [run("r1", "KILLED", 1), run("r2", "RUNNING")]}
    lines: list[str] = []
    done, todo, resumable = resume.what_to_run(children, existing, lines.append)
    assert [c.key for c in done] == ["done"] and [c.key for c in todo] == ["resume", "fresh"]
    assert resumable == {"resume": "r1"}
    assert any("r2" in line and "FAILED" in line for line in lines)
