"""Ctrl-C / SIGTERM are taken between tracking-store calls, never inside one."""

import os
import signal
import sys
import time

import pytest

from bertpooled.tracking import interrupts


def _code_of(module_name: str):
    """A function whose frame claims to run in `module_name` (what in_store_call reads)."""
    namespace = {"__name__": module_name, "time": time, "sys": sys, "interrupts": interrupts}
    exec(
        "def call(inner=None, seconds=0.0):\n"
        "    if inner is not None:\n"
        "        return inner()\n"
        "    end = time.time() + seconds\n"
        "    while time.time() < end:\n"
        "        pass\n"
        "    return interrupts.in_store_call(sys._getframe())\n",
        namespace,
    )
    return namespace["call"]


@pytest.mark.parametrize(
    "module",
    [
        "sqlalchemy.orm.session",
        "sqlite3.dbapi2",
        "mlflow.store.db.utils",
        "mlflow.store.tracking.sqlalchemy_store",
        "psycopg.cursor",
    ],
)
def test_database_frames_anywhere_on_the_stack_count_as_a_store_call(module):
    assert _code_of(module)()
    # Our own code called from inside the store still is inside the store call.
    assert _code_of(module)(inner=_code_of("bertpooled.run.fit"))


@pytest.mark.parametrize(
    "module",
    [
        "bertpooled.run.fit",
        "mlflow.tracking.fluent",
        "mlflow.store.tracking.rest_store",
        "requests.sessions",
        "sqlalchemyish",
    ],
)
def test_other_frames_do_not(module):
    # MLflow's REST client is left interruptible: its retries against a dead server can last minutes.
    assert not _code_of(module)()


@pytest.fixture
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _spin_until_interrupted(timeout: float = 30.0) -> None:
    """Our code between store calls, where a (re-sent) signal must raise; fails if none does in `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.01)
    pytest.fail("no KeyboardInterrupt")


def test_a_sigterm_during_a_store_call_is_taken_right_after_it(handlers):
    interrupts.install()
    store_call = _code_of("sqlalchemy.engine.base")
    events = []

    def signalled_while_inside():  # the signal is sent from inside the store call: no timer to race the machine
        os.kill(os.getpid(), signal.SIGTERM)
        _code_of("bertpooled.run.fit")(seconds=0.3)  # a write and its commit: redeliveries come here, and wait
        return True

    with pytest.raises(KeyboardInterrupt):
        store_call(inner=signalled_while_inside)
        events.append("store call completed")
        _spin_until_interrupted()
    assert events == ["store call completed"]
    # Once taken, further signals are ignored so they cannot cut the KILLED bookkeeping short.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_store_calls_the_interrupt_is_immediate_and_can_be_declined(handlers):
    taken = []

    def on_interrupt(signum):
        taken.append(signum)
        return len(taken) > 1  # an idle sweep worker: note the stop, raise nothing

    interrupts.install(on_interrupt)
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.time() + 30
    while not taken and time.time() < deadline:  # the handler runs at the main thread's next bytecode
        time.sleep(0.01)
    assert taken == [signal.SIGINT]
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        _spin_until_interrupted()
    assert taken == [signal.SIGINT, signal.SIGTERM]
