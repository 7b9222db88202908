"""Rate-limited logging for repeats that could flood the log."""

import time


class RateLimitedLog:
    """Log at most one message per ``interval_s``; count the rest.

    The next message that is logged reports how many were suppressed.
    """

    def __init__(self, logger, interval_s=10.0, clock=time.monotonic):
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.suppressed = 0
        self._last = None

    def _log(self, level, fmt, *args):
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return
        if self.suppressed:
            fmt += " (%d similar messages suppressed)"
            args += (self.suppressed,)
        self.suppressed = 0
        self._last = now
        self.logger.log(level, fmt, *args)

    def warning(self, fmt, *args):
        self._log(30, fmt, *args)

    def error(self, fmt, *args):
        self._log(40, fmt, *args)
