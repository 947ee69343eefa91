"""The collector's tuning for latency-bound processes (nextchar/collector.py), in a fresh process:
it changes the whole process's collector."""

from __future__ import annotations

import json
import subprocess
import sys

TUNED = """
import gc, json
from nextchar.collector import OLDER, YOUNG, tune_for_latency
alive = [[i] for i in range(1000)]  # containers alive when it runs: frozen
before = gc.get_freeze_count()
tune_for_latency()
print(json.dumps({"threshold": gc.get_threshold(), "expected": [YOUNG, OLDER, OLDER],
                  "frozen": gc.get_freeze_count() - before, "counts": gc.get_count()}))
"""


def test_tuning_freezes_what_is_alive_and_collects_the_young_less_often():
    done = subprocess.run([sys.executable, "-c", TUNED], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found["threshold"] == found["expected"] and found["expected"][0] > 700  # CPython's default
    assert found["frozen"] >= 1000  # the lists above, at least
    assert found["counts"][0] < 100  # collected just before: the young generation starts empty
