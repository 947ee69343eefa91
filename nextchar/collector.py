"""Python's cyclic garbage collector, tuned for the processes a person waits on: `tune_for_latency`.

CPython collects its youngest generation whenever 700 more container objects have been
allocated than freed. A search allocates thousands per keystroke that outlive it (the caches'
states, search trees, answers, the memory's remembered p_mem and their keys), so with the
defaults a young collection ran every few keystrokes and, scanning some 12,000 objects with a
few hundred tensors among them, took up to 15 ms; an older one up to 30 ms, a full one 230 ms.
They, not the model, made a keystroke's p99: on 80 held-out lines of Tiny Shakespeare in `line`
mode with the 8 ms deadline, p99 14.4 ms with the defaults and 9.8 ms tuned (`word` mode: 11.4
and 9.8 ms; 2026-12-02, AMD EPYC Zen 4). Nearly nothing a search allocates is cyclic (746
objects after 2,522 keystrokes), so collecting every 20,000 allocations instead loses nothing:
reference counting frees the rest. Freezing what is alive once the model and its memory are
loaded leaves those objects out of every later full collection (230 ms → 31 ms).

`serve` (each worker), `type` and `eval-complete` call it once they have loaded the model, so
that eval-complete's latency is the service's. `complete` does not: it answers once and exits,
and the collection before the freeze would only add to its start-up.
"""

from __future__ import annotations

import gc

YOUNG = 20_000  # allocations between collections of the youngest generation (CPython: 700)
OLDER = 10  # collections of a generation between those of the next older one (CPython: 10)


def tune_for_latency() -> None:
    """Collect what is garbage now, freeze what is alive (never scanned again) and collect the
    young generation every YOUNG allocations from here on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)
