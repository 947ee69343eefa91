"""The lecture page's views (nextchar.lecture.views, bptt, figures), each against the lecture's own
functions computed independently here: the state machine's table, the engine's forward and
backward passes, NumPy's correlation, and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextchar.lecture import LectureInputError, backward, forward, init_params, make_batch, window_machine, window_rnn
from nextchar.lecture.bptt import LectureModels, LectureRNN, accumulate, bptt_view, directional_check, problem
from nextchar.lecture.figures import PLOTTERS, plot_state
from nextchar.lecture.sgd import SGDConfig, run_states
from nextchar.lecture.views import (
    MAX_TEXT,
    correlations,
    distribution_view,
    machine_view,
    numpy_trace,
    state_view,
    text_features,
)
from nextchar.text import START, Vocabulary

VOCAB = Vocabulary.from_text("", alphabet="lecture")


@pytest.fixture(scope="module")
def rnn() -> LectureRNN:
    params = init_params(12, len(VOCAB), len(VOCAB), seed=3)
    params.W0_ss[:] = np.linspace(-0.2, 0.2, 12)
    return LectureRNN(params, "tanh", VOCAB, "a random lecture RNN (seed 3)")


@pytest.mark.parametrize("text", ["what happens", "", "a", "aaa", 'say "hi"\nok', "é 日本"])
@pytest.mark.parametrize("context", [1, 3, 6])
def test_machine_view_is_the_table_and_the_fixed_rnn(text: str, context: int) -> None:
    view = machine_view(text, context)
    table = window_machine(context).transduce("^" + text)
    assert view["rows"] == [{"t": r.t, "x": r.x, "s": r.s, "output": r.output} for r in table]
    rnn = window_rnn(sorted(set("^" + text)), context, "^")
    assert view["m"] == rnn.m == context * view["ell"]
    for hot, row in zip(view["hot"], table, strict=True):  # the lit unit of each block spells s_t, newest first
        assert "".join(view["alphabet"][k] for k in reversed(hot)) == row.s
    assert view["states_equal_table"] and view["one_hot"]
    names = view["W_ss_blocks"]
    assert all(names[k][j] == ("I" if k == j + 1 else "0") for k in range(context) for j in range(context))
    assert view["W_sx_blocks"] == [["I"]] + [["0"]] * (context - 1)
    assert np.array_equal(np.array(view["W_ss"]), rnn.W_ss)


def test_machine_view_refuses_what_it_cannot_show() -> None:
    for context in (0, 7):
        with pytest.raises(LectureInputError, match=r"m .* must be 1 … 6"):
            machine_view("abc", context)
    with pytest.raises(LectureInputError, match=f"at most {MAX_TEXT}"):
        machine_view("x" * (MAX_TEXT + 1))
    assert machine_view("".join(chr(0x4E00 + i) for i in range(40)), 6)["W_ss"] is None  # too big to send whole


def test_state_view_is_the_engines_states(rnn: LectureRNN) -> None:
    text = 'say "what" now\nand "then" more words'
    trace = numpy_trace(rnn.params, rnn.f1, rnn.vocab, text)
    indices = [START, *VOCAB.encode(VOCAB.prepare(text))]
    states, probs = run_states(rnn.params, rnn.f1, indices)
    assert np.array_equal(trace.S, states[1:]) and np.array_equal(trace.P, probs)
    view = state_view(trace)
    assert np.allclose(view["states"], states[1:], atol=1e-5)
    assert view["inputs"] == ["^", *VOCAB.prepare(text)]
    features = {f["name"]: f for f in view["features"]}
    for f in features.values():
        values = np.array(f["values"])
        for entry in f["units"]:
            expected = np.corrcoef(trace.S[1:, entry["unit"]], values)[0, 1]
            assert entry["r"] == pytest.approx(expected, abs=1e-9)
        rs = [abs(e["r"]) for e in f["units"]]
        assert rs == sorted(rs, reverse=True)


def test_text_features() -> None:
    f = text_features('a "bc" d\nef')
    assert f["inside quotes"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert f["line position"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]
    assert f["inside a word"].tolist() == [1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert f["word position"].tolist() == [1, 0, 0, 1, 2, 0, 0, 1, 0, 1, 2]
    constant = correlations(np.ones((4, 2)), np.arange(4.0))
    assert np.isnan(constant).all()


def test_distribution_view_adds_up_the_bits(rnn: LectureRNN) -> None:
    text = "what happens"
    trace = numpy_trace(rnn.params, rnn.f1, rnn.vocab, text)
    view = distribution_view(trace, k=3)
    indices = VOCAB.encode(text)
    batch = make_batch([[START, *indices[:-1]]], [indices], len(VOCAB), len(VOCAB))
    fwd = forward(rnn.params, batch, rnn.f1)  # L_seq in nats, from the engine's own loss
    assert view["L_seq_nats"] == pytest.approx(fwd.J, rel=1e-12)
    assert view["BPC"] == pytest.approx(fwd.J / math.log(2) / len(text), rel=1e-12)
    for row, L_elt in zip(view["rows"], fwd.L_elt[0], strict=True):
        assert row["bits"] == pytest.approx(L_elt / math.log(2), rel=1e-12)
        assert row["p"] == pytest.approx(math.exp(-L_elt), rel=1e-12)
        assert len(row["top"]) == 3 and row["top"][0][1] >= row["top"][1][1]
    assert [r["y"] for r in view["rows"]] == list(text)
    assert distribution_view(numpy_trace(rnn.params, rnn.f1, rnn.vocab, ""))["BPC"] is None
    with pytest.raises(LectureInputError, match="k must be"):
        distribution_view(trace, k=0)


@pytest.mark.parametrize("f1", ["tanh", "relu"])
def test_bptt_view_is_backward(rnn: LectureRNN, f1: str) -> None:
    text = "what happens to a dream"
    view = bptt_view(rnn, text, f1, scale=1.5)
    params, batch, _ = problem(rnn, text, 1.5)
    assert np.array_equal(params.W_ss, rnn.params.W_ss * 1.5)
    fwd = forward(params, batch, f1)
    bwd = backward(params, batch, fwd)
    assert view["L_seq"] == pytest.approx(fwd.J)
    assert np.allclose(view["dL_ds_norms"], np.linalg.norm(bwd.dJ_ds[0], axis=1), rtol=1e-12)
    assert len(view["dL_ds_norms"]) == len(text) + 1 and len(view["accumulated_norms"]) == len(text)
    assert np.allclose(view["dJ_dW_ss"], bwd.grads.W_ss, rtol=1e-10, atol=1e-14)  # upto = 1: the whole sum
    assert view["accumulated_norms"][0] == pytest.approx(np.linalg.norm(bwd.grads.W_ss))
    assert view["accumulated_error"] < 1e-12 and view["fd_error"] < 1e-5
    # The last step's term alone, as BPTT adds it first.
    last = bptt_view(rnn, text, f1, 1.5, upto=len(text))
    assert np.allclose(last["dJ_dW_ss"], np.outer(bwd.dJ_dz1[0, -1], fwd.S[0, -2]))
    terms, _, _, _ = accumulate(fwd, bwd, 1)
    assert terms[-1] == pytest.approx(np.linalg.norm(np.outer(bwd.dJ_dz1[0, -1], fwd.S[0, -2])))


def test_bptt_gradients_vanish_and_explode(rnn: LectureRNN) -> None:
    text = "what happens to a dream deferred"
    small = bptt_view(rnn, text, "tanh", scale=0.1)
    norms = small["dL_ds_norms"]
    # dJ/ds_0 = (αW^ss)ᵀ (dJ/ds_1 ⊙ f1'), so one step back shrinks it by at most ‖αW^ss‖₂ (|tanh'| ≤ 1).
    assert norms[0] <= small["W_ss_norm"] * norms[1] * (1 + 1e-12)
    assert small["W_ss_norm"] < 0.2
    big = bptt_view(rnn, text * 4, "relu", scale=8.0)
    assert big["dL_ds_norms"][0] is None or big["dL_ds_norms"][0] > 1e6 * big["dL_ds_norms"][-2]


def test_bptt_refuses_bad_input(rnn: LectureRNN) -> None:
    with pytest.raises(LectureInputError, match="at least one"):
        bptt_view(rnn, "", "tanh")
    with pytest.raises(LectureInputError, match="scale"):
        bptt_view(rnn, "abc", "tanh", scale=100)
    with pytest.raises(LectureInputError, match="f1"):
        bptt_view(rnn, "abc", "sigmoid")
    with pytest.raises(LectureInputError, match="upto"):
        bptt_view(rnn, "abc", "tanh", upto=4)


def test_directional_check_sees_a_wrong_gradient(rnn: LectureRNN) -> None:
    params, batch, _ = problem(rnn, "what happens")
    grads = backward(params, batch, forward(params, batch, "tanh")).grads
    assert directional_check(params, batch, "tanh", grads) < 1e-6
    grads.W_ss *= 1.1
    assert directional_check(params, batch, "tanh", grads) > 1e-3


def test_lecture_models_train_once_per_f1() -> None:
    models = LectureModels(hidden=8, config=SGDConfig(steps=20, check_every=10))
    first = models.get("tanh")
    assert models.get("tanh") is first and first.params.m == 8 and "20 updates" in first.description
    assert models.get("relu").f1 == "relu"


def test_every_figure_is_a_png(rnn: LectureRNN, tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = 'say "hi"'
    trace = numpy_trace(rnn.params, rnn.f1, rnn.vocab, text)
    views = {
        "machine": machine_view(text),
        "state": state_view(trace),
        "distribution": distribution_view(trace),
        "bptt": bptt_view(rnn, text, "relu", 8.0),
    }
    for name, plot in PLOTTERS.items():
        plot(views[name], tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_state(views["state"], tmp_path / "unit.png", unit=3)
    assert (tmp_path / "unit.png").stat().st_size > 1000
