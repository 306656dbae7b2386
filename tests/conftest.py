"""Host test settings: no hypothesis deadlines, since CI and developer machines are shared and noisy
(speed is measured by the benchmarks under bench/, never asserted with a clock in tests)."""

from hypothesis import settings

settings.register_profile("mhd", deadline=None)
settings.load_profile("mhd")
