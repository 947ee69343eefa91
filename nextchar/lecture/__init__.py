"""The lecture, runnable: MIT 6.036's RNN lecture in NumPy, in the lecture's own notation.

Read in this order (each file opens with the part of the lecture it implements):

    statemachine.py   state machines; the "last m characters" machine; the same machine as
                      an RNN with fixed weights W^sx, W^ss                    (sections 2–3)
    rnn.py            the RNN s_t = f1(W^sx x_t + W^ss s_{t-1} + W0^ss), p_t = softmax(W^o s_t + W0^o),
                      its loss J, and its gradients by backpropagation through time, with a
                      finite-difference gradient check                        (sections 4–5)
    sgd.py            SGD as the lecture states it, minibatches, gradient clipping, and the
                      three-line worked example                               (section 5)
    convert.py        to and from nextchar's PyTorch `rnn` model and checkpoints; a `window`
                      checkpoint as the fixed-weight RNN (torch imported only when called)

`nextchar lecture …` runs these steps from the command line (nextchar/cli/lecture.py).

This package needs NumPy only; nothing here imports torch until a conversion is asked for.
"""

from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import (
    Backward,
    Batch,
    Forward,
    Params,
    backward,
    forward,
    gradient_check,
    init_params,
    loss_and_gradients,
    make_batch,
    numerical_gradients,
    one_hot,
    output,
    relative_error,
    transition,
)
from nextchar.lecture.sgd import (
    THREE_LINES,
    ExampleResult,
    History,
    SGDConfig,
    TrainingDiverged,
    clip_gradients,
    encode_line,
    encode_lines,
    greedy_decode,
    reconstruct,
    sgd_step,
    train,
    worked_example,
)
from nextchar.lecture.statemachine import StateMachine, Step, WindowRNN, shift_weights, window_machine, window_rnn

__all__ = [
    "THREE_LINES",
    "Backward",
    "Batch",
    "ExampleResult",
    "Forward",
    "History",
    "LectureInputError",
    "Params",
    "SGDConfig",
    "StateMachine",
    "Step",
    "TrainingDiverged",
    "WindowRNN",
    "backward",
    "clip_gradients",
    "encode_line",
    "encode_lines",
    "forward",
    "gradient_check",
    "greedy_decode",
    "init_params",
    "loss_and_gradients",
    "make_batch",
    "numerical_gradients",
    "one_hot",
    "output",
    "reconstruct",
    "relative_error",
    "sgd_step",
    "shift_weights",
    "train",
    "transition",
    "window_machine",
    "window_rnn",
    "worked_example",
]
