"""common.bench's flag parsing for the benchmarks' comma-listed counts."""
from __future__ import annotations

import pytest

from common.bench import counts_flag


def test_counts_flag_keeps_the_order_and_refuses_what_is_not_a_count():
    assert counts_flag("6,6,7", "--sessions") == [6, 6, 7]
    assert counts_flag("2, 1,", "--kv-window") == [2, 1]
    for bad in ("0", "1,-2", "a,1", "1.5", "", ","):
        with pytest.raises(ValueError, match=r"--walks must list integers >= 1, got "):
            counts_flag(bad, "--walks")
