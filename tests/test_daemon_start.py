"""What the daemon does to its process at start."""

from __future__ import annotations

import resource

from mhd.daemon import raise_fd_limit


def test_the_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        new_soft, new_hard = raise_fd_limit()
        assert new_hard == hard
        assert new_soft > low and (new_soft == hard or hard == resource.RLIM_INFINITY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
