import faulthandler
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# No test takes more than a minute or two; a stalled one must not hold CI until its overall
# limit with nothing printed. faulthandler's watchdog is a C thread that needs no GIL, so it
# fires even when a native call holds the GIL forever: it writes every thread's stack to the
# terminal and ends the run. WMPO_TEST_DEADLINE_S=0 turns it off (e.g. under a debugger).
TEST_DEADLINE_S = float(os.environ.get("WMPO_TEST_DEADLINE_S", "600"))
_stderr_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    # A copy of the real stderr, taken while output capture is off: during a test, fd 2 is
    # pytest's capture file, which nobody reads once the process has exited.
    _stderr_fd = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _stderr_fd
    if _stderr_fd is not None:
        os.close(_stderr_fd)
        _stderr_fd = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    if TEST_DEADLINE_S <= 0 or _stderr_fd is None:
        return (yield)
    faulthandler.dump_traceback_later(TEST_DEADLINE_S, exit=True, file=_stderr_fd)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
