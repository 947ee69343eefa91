"""Benchmarks of nextchar: measurements for docs/, not tests (they train, time and load the machine).

Each module is one benchmark, run from the repository root as a module so that `bench` and
`nextchar` import without any path edits:

    python -m bench.quality     # validation BPC per model kind under one budget, vs compressors
    python -m bench.adapt       # dynamic evaluation and personalisation on Tiny Shakespeare
    python -m bench.complete    # autocomplete: trie vs window model vs the default model
    python -m bench.step        # one model step for B hypotheses: forward vs stepper precisions
    python -m bench.search      # the service's keystroke searches, alone and batched
    python -m bench.load        # `nextchar serve` under simulated typists
    python -m bench.scale       # prepare throughput, 1 vs 2 processes, bf16 vs fp32
    python -m bench.lecture_speed   # the lecture's NumPy engine vs the PyTorch `rnn` model

`--help` on each gives its options (most have a seconds-long `--quick`). Every benchmark prints
its tables and writes its raw figures, with the command, commit, machine and versions, as JSON
under bench/results/ (bench.record); bench.compressors holds the compression baselines that
bench.quality and bench.adapt share. Most need ../shared/data (Tiny Shakespeare, the names).
"""
