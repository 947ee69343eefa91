"""Training: minibatch optimisation of J = Σ_i L_seq with truncated BPTT.

Reading order: `config` (every setting and its measured default), `optimisation` (what one
step computes), `loop` (`train`: the run as a `TrainState` advanced by small steps), `resume`
(the exact state a stopped run continues from), `distributed` (devices and DDP under torchrun),
`plot` (the BPC curve).
"""
