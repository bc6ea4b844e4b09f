"""Started on PYTHONPATH, this moves a test process's wall clock by
SLUICE_TEST_CLOCK_OFFSET seconds (time.time and datetime.now follow time.time here
only where code calls time.time): a limiter on a host whose clock is off."""

import os
import time

_offset = float(os.environ.get("SLUICE_TEST_CLOCK_OFFSET", "0") or 0)
if _offset:
    _real_time = time.time
    time.time = lambda: _real_time() + _offset  # type: ignore[assignment]
