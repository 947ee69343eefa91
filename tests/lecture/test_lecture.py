"""The lecture engine in NumPy (nextchar.lecture): state machines, the fixed-weight RNN, forward
and backward passes checked against finite differences, SGD and the three-line example."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextchar.lecture import (
    THREE_LINES,
    LectureInputError,
    Params,
    SGDConfig,
    TrainingDiverged,
    backward,
    clip_gradients,
    encode_line,
    forward,
    gradient_check,
    init_params,
    loss_and_gradients,
    make_batch,
    reconstruct,
    sgd_step,
    shift_weights,
    train,
    window_machine,
    window_rnn,
    worked_example,
)
from nextchar.lecture.rnn import NAMES, numerical_gradients, random_problem, relative_error
from nextchar.lecture.statemachine import StateMachine, format_table
from nextchar.text import END, START, Vocabulary


def test_importing_the_engine_does_not_import_torch():
    code = "import nextchar.lecture, nextchar.cli.lecture, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ 1. state machines


def test_state_machine_table_has_t_input_state_output():
    counter = StateMachine(0, lambda s, x: s + x, lambda s: s % 2)
    rows = counter.transduce([1, 2, 3])
    assert [(r.t, r.x, r.s, r.output) for r in rows] == [(0, None, 0, None), (1, 1, 1, 1), (2, 2, 3, 1), (3, 3, 6, 0)]


def test_window_machine_reproduces_the_lecture_table():
    rows = window_machine(3).transduce("^what happens")
    assert [r.s for r in rows[:7]] == ["^^^", "^^^", "^^w", "^wh", "wha", "hat", "at "]
    assert [r.x for r in rows[:7]] == [None, "^", "w", "h", "a", "t", " "]
    assert rows[-1].s == "ens"
    table = format_table(rows)
    for line in (
        " 0       ^^^",
        " 1  ^    ^^^",
        " 2  w    ^^w",
        " 3  h    ^wh",
        " 4  a    wha",
        " 5  t    hat",
        " 6  _    at_",
    ):
        assert line in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"m": 0}, "m must be at least 1"),
        ({"m": 2, "start": "^^"}, "start marker must be one character"),
        (
            {"m": 2, "start": "^", "alphabet": "ab"},
            "character '^' (position 0 of the start marker) is not in the alphabet",
        ),
    ],
)
def test_window_machine_refuses_bad_settings(args, message):
    with pytest.raises(LectureInputError, match=re.escape(message)):
        window_machine(**args)


def test_window_machine_refuses_a_character_outside_its_alphabet():
    machine = window_machine(2, "a", alphabet="ab")
    with pytest.raises(LectureInputError, match=re.escape("character 'c' (position 0 of the input) is not in")):
        machine.transduce("abc")


# ------------------------------------------------------------------------------ 2. the machine as an RNN


def test_fixed_weights_are_the_lectures_for_binary_scalars():
    rnn = window_rnn("01", 3, encoding="scalar")
    np.testing.assert_array_equal(rnn.W_sx, [[1], [0], [0]])
    np.testing.assert_array_equal(rnn.W_ss, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # s_t[0] = x_t, s_t[k] = s_{t-1}[k-1]: "0110" leaves 1,1,0 (newest first).
    np.testing.assert_array_equal(rnn.states("0110")[-1], [0, 1, 1])
    assert rnn.decode_state(rnn.states("0110")[-1]) == "110"


def test_fixed_weights_block_form():
    ell, c = 3, 4
    W_sx, W_ss = shift_weights(ell, c)
    eye, zero = np.eye(ell), np.zeros((ell, ell))
    assert W_sx.shape == (c * ell, ell) and W_ss.shape == (c * ell, c * ell)
    np.testing.assert_array_equal(W_sx, np.vstack([eye] + [zero] * (c - 1)))
    expected = np.block([[eye if i == j + 1 else zero for j in range(c)] for i in range(c)])
    np.testing.assert_array_equal(W_ss, expected)
    # ℓ = 1 is the scalar case of the lecture.
    _, W_ss1 = shift_weights(1, 3)
    np.testing.assert_array_equal(W_ss1, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fixed_weight_rnn_states_equal_the_machines_states_one_hot(data):
    alphabet = data.draw(st.lists(st.characters(codec="utf-8"), min_size=1, max_size=6, unique=True), "alphabet")
    c = data.draw(st.integers(1, 5), "c")
    start = data.draw(st.sampled_from(alphabet), "start")
    text = data.draw(st.text(alphabet=alphabet, max_size=25), "text")
    machine = window_machine(c, start, alphabet)
    rnn = window_rnn(alphabet, c, start)
    assert rnn.m == c * len(alphabet)
    expected = [rnn.encode_state(s) for s in machine.states(text)]
    states = rnn.states(text)
    assert len(states) == len(expected) == len(text) + 1
    for t, (got, want) in enumerate(zip(states, expected, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"step {t}")
        assert rnn.decode_state(got) == machine.states(text)[t]
    if text:  # the batched forward pass of the engine computes the same states
        params = rnn.params(np.zeros((2, rnn.m)), np.zeros(2))
        batch = make_batch([[alphabet.index(ch) for ch in text]], [[0] * len(text)], rnn.ell, 2)
        np.testing.assert_array_equal(forward(params, batch, "relu", rnn.s0).S[0], states)


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 6), text=st.text(alphabet="01", max_size=20))
def test_scalar_rnn_matches_the_machine_on_binary_strings(c, text):
    machine, rnn = window_machine(c, "0", "01"), window_rnn("01", c, encoding="scalar")
    for got, want in zip(rnn.states(text), machine.states(text), strict=True):
        np.testing.assert_array_equal(got, rnn.encode_state(want))


def test_window_rnn_refuses_bad_alphabets():
    with pytest.raises(LectureInputError, match="alphabet is empty"):
        window_rnn("", 2)
    with pytest.raises(LectureInputError, match="repeats a character"):
        window_rnn("aba", 2)
    with pytest.raises(LectureInputError, match="scalar encoding is for two characters"):
        window_rnn("abc", 2, encoding="scalar")
    with pytest.raises(LectureInputError, match=re.escape("character 'z' (position 2 of the input) is not in")):
        window_rnn("ab", 2).states("abz")


# ------------------------------------------------------------------------------ 3. forward


def _batch(lines: list[list[int]], ell: int, v: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    targets = [rng.integers(0, v, len(line)).tolist() for line in lines]
    return make_batch(lines, targets, ell, v), targets


def test_forward_is_the_lectures_equations_step_by_step():
    params = init_params(4, 5, 6, seed=1)
    params.W0_ss[:] = 0.3
    batch, targets = _batch([[0, 3, 1, 4]], 5, 6)
    fwd = forward(params, batch, "tanh")
    s = np.zeros(4)
    J = 0.0
    for t, (x_index, y) in enumerate(zip([0, 3, 1, 4], targets[0], strict=True), start=1):
        x = np.eye(5)[x_index]
        s = np.tanh(params.W_sx @ x + params.W_ss @ s + params.W0_ss)  # column-vector form
        z2 = params.W_o @ s + params.W0_o
        p = np.exp(z2) / np.exp(z2).sum()
        np.testing.assert_allclose(fwd.S[0, t], s, rtol=1e-12)
        np.testing.assert_allclose(fwd.P[0, t - 1], p, rtol=1e-12)
        J += -np.log(p[y])
    assert pytest.approx(J, rel=1e-12) == fwd.J


def test_padding_changes_nothing():
    """A batch of sequences of different lengths gives each sequence's own L_seq and the sum of their gradients."""
    params = init_params(5, 4, 4, seed=2)
    sequences = [[1, 2, 3, 0, 1, 2], [3], [0, 0, 1]]
    batch, targets = _batch(sequences, 4, 4)
    fwd = forward(params, batch, "tanh")
    J, grads = loss_and_gradients(params, batch, "tanh")
    total = params.zeros_like()
    for i, (seq, ys) in enumerate(zip(sequences, targets, strict=True)):
        one = make_batch([seq], [ys], 4, 4)
        J_i, g_i = loss_and_gradients(params, one, "tanh")
        assert fwd.L_seq[i] == pytest.approx(J_i, rel=1e-12)
        np.testing.assert_allclose(fwd.final_state(batch)[i], forward(params, one, "tanh").S[0, -1], rtol=1e-12)
        for name in NAMES:
            getattr(total, name)[...] += getattr(g_i, name)
    assert pytest.approx(float(fwd.L_seq.sum()), rel=1e-12) == J
    for name in NAMES:
        np.testing.assert_allclose(getattr(grads, name), getattr(total, name), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------ 5a. gradient check


@pytest.mark.parametrize("f1", ["tanh", "relu"])
@pytest.mark.parametrize("seed", range(8))
def test_gradients_match_central_finite_differences(f1, seed):
    params, batch = random_problem(seed, f1)
    errors = gradient_check(params, batch, f1)
    assert set(errors) == set(NAMES)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("f1", ["tanh", "relu"])
def test_gradients_with_a_given_initial_state(f1):
    params, batch = random_problem(100, f1)
    s0 = np.random.default_rng(0).uniform(0.1, 0.5, params.m)
    assert max(gradient_check(params, batch, f1, s0=s0).values()) < 1e-6


def test_gradient_check_detects_a_wrong_gradient():
    """The check is not vacuous: a gradient off by 0.1% fails it."""
    params = init_params(4, 3, 3, seed=3)
    batch, _ = _batch([[0, 1, 2, 1, 0]], 3, 3)
    fwd = forward(params, batch, "tanh")
    wrong = backward(params, batch, fwd).grads
    numeric = numerical_gradients(params, batch, "tanh")
    assert relative_error(wrong.W_sx, numeric.W_sx) < 1e-6
    wrong.W_sx *= 1.001
    assert relative_error(wrong.W_sx, numeric.W_sx) > 1e-4


# ------------------------------------------------------------------------------ bad input


def test_mismatched_shapes_are_named():
    good = init_params(3, 4, 5)
    with pytest.raises(LectureInputError, match="W_ss must be square"):
        Params(good.W_sx, np.zeros((3, 2)), good.W0_ss, good.W_o, good.W0_o)
    with pytest.raises(LectureInputError, match=r"W_sx has shape 2×4, expected 3×ℓ"):
        Params(np.zeros((2, 4)), good.W_ss, good.W0_ss, good.W_o, good.W0_o)
    with pytest.raises(LectureInputError, match=r"W_o has shape 5×2, expected 5×3"):
        Params(good.W_sx, good.W_ss, good.W0_ss, np.zeros((5, 2)), good.W0_o)
    with pytest.raises(LectureInputError, match=r"W0_o has shape 4, expected 5"):
        Params(good.W_sx, good.W_ss, good.W0_ss, good.W_o, np.zeros(4))
    with pytest.raises(LectureInputError, match=r"W0_ss has shape 3×1, expected 3"):
        Params(good.W_sx, good.W_ss, np.zeros((3, 1)), good.W_o, good.W0_o)
    with pytest.raises(LectureInputError, match="mix dtypes"):
        Params(good.W_sx.astype(np.float32), good.W_ss, good.W0_ss, good.W_o, good.W0_o)
    batch = make_batch([[0, 1]], [[0, 1]], 6, 5)
    with pytest.raises(LectureInputError, match=r"inputs x have shape \(1, 2, 6\), expected \(B, T, ℓ=4\)"):
        forward(good, batch)
    with pytest.raises(LectureInputError, match=r"s_0 has shape \(7,\)"):
        forward(good, make_batch([[0, 1]], [[0, 1]], 4, 5), s0=np.zeros(7))


def test_empty_sequences_and_unknown_characters_are_refused():
    with pytest.raises(LectureInputError, match="sequence 1 is empty"):
        make_batch([[0, 1], []], [[0, 1], []], 3, 3)
    with pytest.raises(LectureInputError, match=re.escape("sequence 0: input index 7 (step 2) is outside")):
        make_batch([[0, 7]], [[0, 1]], 3, 3)
    with pytest.raises(LectureInputError, match="sequence 0 has 2 inputs but 1 targets"):
        make_batch([[0, 1]], [[0]], 3, 3)
    vocab = Vocabulary.from_text("", alphabet="lecture")
    with pytest.raises(LectureInputError, match=r"character 'W' \(position 0 of 'What'\) is not in the alphabet"):
        encode_line("What", vocab)
    with pytest.raises(LectureInputError, match="an empty line"):
        encode_line("", vocab)
    with pytest.raises(LectureInputError, match="f1 must be one of tanh, relu, not 'sigmoid'"):
        forward(init_params(2, 3, 3), make_batch([[0]], [[0]], 3, 3), "sigmoid")


def test_lines_are_framed_as_in_the_lecture():
    vocab = Vocabulary.from_text("", alphabet="lecture")
    x, y = encode_line("wh", vocab)
    assert x == [START, *vocab.encode("wh")] and y == [*vocab.encode("wh"), END]


# ------------------------------------------------------------------------------ 4. SGD


def test_sgd_step_and_clipping():
    params = init_params(3, 2, 2)
    grads = params.copy()
    for _, g in grads.items():
        g[...] = 3.0
    before = params.copy()
    sgd_step(params, grads, 0.5)
    for name in NAMES:
        np.testing.assert_allclose(getattr(params, name), getattr(before, name) - 1.5)
    norm = clip_gradients(grads, 1.0)
    n_entries = sum(g.size for _, g in grads.items())
    assert norm == pytest.approx(3.0 * np.sqrt(n_entries))
    assert np.sqrt(sum(float((g**2).sum()) for _, g in grads.items())) == pytest.approx(1.0)
    assert clip_gradients(grads, 10.0) == pytest.approx(1.0)  # below the limit: unchanged


def test_one_sgd_update_steps_along_minus_the_gradient_of_one_sequence():
    """The lecture's SGD: W ← W − η ∇L_seq(i) for one i chosen at random."""
    vocab = Vocabulary.from_text("", alphabet="lecture")
    sequences = [encode_line(line, vocab) for line in ("ab", "ba ab", "c")]
    v = len(vocab)
    start = init_params(6, v, v, seed=5)
    candidates = []
    for xs, ys in sequences:
        _, g = loss_and_gradients(start, make_batch([xs], [ys], v, v))
        candidates.append(Params(**{n: getattr(start, n) - 0.1 * getattr(g, n) for n in NAMES}))
    chosen = set()
    for seed in range(12):
        params = start.copy()
        train(params, sequences, v, v, SGDConfig(lr=0.1, steps=1, clip=0, seed=seed))
        matches = [
            i
            for i, c in enumerate(candidates)
            if all(np.allclose(getattr(params, n), getattr(c, n), rtol=0, atol=1e-14) for n in NAMES)
        ]
        assert len(matches) == 1
        chosen.add(matches[0])
    assert chosen == {0, 1, 2}  # every index gets chosen


def test_exploding_gradients_are_reported_and_clipping_prevents_them():
    vocab = Vocabulary.from_text("", alphabet="lecture")
    sequences = [encode_line(line, vocab) for line in THREE_LINES]
    v = len(vocab)
    params = init_params(32, v, v, seed=0)
    params.W_ss[...] = 2.0 * np.eye(32) + params.W_ss  # a stretching W^ss with relu: explodes
    with pytest.raises(TrainingDiverged, match=r"training diverged at step .* exploding gradients") as info:
        train(params.copy(), sequences, v, v, SGDConfig(lr=0.1, steps=200, clip=0), "relu")
    assert info.value.history.grad_norm and max(info.value.history.grad_norm) > 1e6
    history = train(params.copy(), sequences, v, v, SGDConfig(lr=0.1, steps=50, clip=5.0), "relu")
    assert np.isfinite(history.loss).all() and history.clipped > 0


@pytest.mark.parametrize(("f1", "batch_size"), [("tanh", 1), ("tanh", 3), ("relu", 1)])
def test_the_three_line_worked_example(f1, batch_size):
    result = worked_example(config=SGDConfig(batch_size=batch_size, steps=3000, check_every=10), f1=f1)
    assert result.solved, result.reconstructions
    assert result.reconstructions == list(THREE_LINES)
    assert result.history.loss[-1] < result.history.loss[0] / 10
    for line in THREE_LINES:
        assert reconstruct(result.params, f1, result.vocab, line) == line
