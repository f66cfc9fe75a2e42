"""Stand-ins that several test files share."""


class Clock:
    """time.perf_counter faked: each call returns the next of `times`."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)
