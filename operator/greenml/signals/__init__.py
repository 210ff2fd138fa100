"""Carbon-intensity and energy signals behind small interfaces.

`IntensitySeries` is the one time-series type used by sources, the forecaster,
the planners and the simulator. `CarbonSource` is the provider interface.
"""
from greenml.signals.base import CarbonSource, IntensitySeries, SignalError

__all__ = ["CarbonSource", "IntensitySeries", "SignalError"]
