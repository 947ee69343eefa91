"""The models: one state interface for every kind, and the lecture's equations exactly (models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nextchar.models import (
    KINDS,
    GatedRNN,
    LectureRNN,
    ModelConfig,
    WindowModel,
    build_model,
    detach_state,
    select_state,
    stack_states,
)
from nextchar.text import START
from tests.helpers import model_config

ALL_KINDS = ["window", "rnn-tanh", "rnn-relu", "lstm", "gru"]
V = 11


def make(kind: str, **overrides: object):
    torch.manual_seed(0)
    overrides.setdefault("vocab_size", V)
    model = build_model(model_config(kind, **overrides))
    if isinstance(model, WindowModel):  # zeros at initialisation: give it something to compute
        with torch.no_grad():
            model.W_o.normal_()
            model.W0_o.normal_()
    return model.eval()


def test_build_model_kinds():
    assert set(KINDS) == {"window", "rnn", "lstm", "gru"}
    assert isinstance(make("window"), WindowModel)
    assert isinstance(make("rnn-tanh"), LectureRNN)
    assert isinstance(make("lstm"), GatedRNN) and isinstance(make("gru"), GatedRNN)
    with pytest.raises(ValueError, match="unknown model kind 'transformer'"):
        build_model(ModelConfig(kind="transformer", vocab_size=V))
    with pytest.raises(ValueError, match="vocabulary too small"):
        build_model(ModelConfig(kind="rnn", vocab_size=3))
    with pytest.raises(ValueError, match="f1 must be tanh or relu"):
        build_model(ModelConfig(kind="rnn", vocab_size=V, nonlinearity="sigmoid"))
    with pytest.raises(ValueError, match="context of at least 1"):
        build_model(ModelConfig(kind="window", vocab_size=V, context=0))


def test_model_config_json_round_trip_and_unknown_settings():
    config = model_config("lstm", vocab_size=V, num_layers=2)
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"unknown model settings \['heads'\]"):
        ModelConfig.from_json({**config.to_json(), "heads": 4})


# ------------------------------------------------------------------------------ state interface


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_state_interface_is_batch_first_tuples(kind, layers):
    model = make(kind, num_layers=layers)
    state = model.initial_state(3)
    assert isinstance(state, tuple) and state
    assert all(isinstance(s, torch.Tensor) and s.shape[0] == 3 for s in state)
    idx = torch.randint(0, V, (3, 5))
    logits, new_state = model(idx, state)
    assert logits.shape == (3, 5, V)
    assert isinstance(new_state, tuple)
    assert [s.shape for s in new_state] == [s.shape for s in state]
    # No state means the initial state.
    assert torch.equal(model(idx)[0], logits)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_one_call_equals_two_chunks_carrying_the_state(kind):
    model = make(kind, num_layers=2, dropout=0.3)  # dropout must be off in eval mode
    idx = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        whole, final = model(idx, model.initial_state(2))
        first, state = model(idx[:, :6], model.initial_state(2))
        second, state = model(idx[:, 6:], state)
        steps, step_state = [], model.initial_state(2)
        for t in range(idx.shape[1]):  # and one character at a time, as sampling does
            out, step_state = model(idx[:, t : t + 1], step_state)
            steps.append(out)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-5, atol=1e-5)
    for a, b, c in zip(state, step_state, final, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_select_and_stack_states_pick_rows(kind):
    model = make(kind, num_layers=2)
    idx = torch.randint(0, V, (4, 7))
    with torch.no_grad():
        _, state = model(idx)
        row2 = select_state(state, 2)
        alone, _ = model(idx[2:3, :3], model.initial_state(1))
        assert all(s.shape[0] == 1 for s in row2)
        swapped = stack_states([select_state(state, torch.tensor([3])), select_state(state, slice(0, 3))])
        assert torch.equal(swapped[0][0], state[0][3])
        nxt = torch.randint(0, V, (1, 2))
        torch.testing.assert_close(model(nxt, row2)[0], model(nxt, select_state(swapped, 3))[0])
        assert alone.shape == (1, 3, V)
    with torch.enable_grad():
        _, graph_state = make(kind)(idx)
    assert all(not s.requires_grad for s in detach_state(graph_state))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bf16_autocast_runs(kind):
    model = make(kind)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, V, (2, 4)))
    assert logits.shape == (2, 4, V) and torch.isfinite(logits.float()).all()
    assert all(s.dtype in (torch.float32, torch.long) for s in state)  # states stay exact between calls


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_weight_drop_masks_the_recurrent_weights_only_while_training(kind, layers):
    plain = make(kind, num_layers=layers).train()
    dropped = make(kind, num_layers=layers, weight_drop=0.5).train()  # same seed: same weights
    idx = torch.randint(0, V, (3, 6))
    # Without a mask (eval mode) the two are the same model.
    torch.testing.assert_close(plain.eval()(idx)[0], dropped.eval()(idx)[0])
    # The fused kernel with the weight list computes what nn.LSTM/GRU compute (weight drop → 0).
    zero = make(kind, num_layers=layers, weight_drop=1e-12).train()
    torch.testing.assert_close(zero(idx)[0], plain.train()(idx)[0])
    # While training the mask changes the function, and W_hh still gets its gradient.
    torch.manual_seed(1)
    logits, _ = dropped.train()(idx)
    assert not torch.allclose(logits, plain(idx)[0])
    logits.square().sum().backward()
    assert all(getattr(dropped.rnn, f"weight_hh_l{i}").grad.abs().sum() > 0 for i in range(layers))


# ------------------------------------------------------------------------------ the lecture's equations


@pytest.mark.parametrize("f1", ["tanh", "relu"])
def test_lecture_rnn_equals_the_lecture_loop(f1):
    model = make(f"rnn-{f1}", hidden_size=7)
    with torch.no_grad():
        model.W0_ss.normal_()  # non-zero biases, so that each one is checked
        model.W0_o.normal_()
    assert model.W_sx.shape == (7, V) and model.W_ss.shape == (7, 7) and model.W_o.shape == (V, 7)
    f = torch.tanh if f1 == "tanh" else torch.relu
    idx = torch.randint(0, V, (3, 9))
    with torch.no_grad():
        logits, (s_last,) = model(idx)
        for b in range(3):
            s = torch.zeros(7)  # s_0
            for t in range(9):
                x_t = F.one_hot(idx[b, t], V).float()
                s = f(model.W_sx @ x_t + model.W_ss @ s + model.W0_ss)
                p_t = torch.softmax(model.W_o @ s + model.W0_o, dim=0)
                torch.testing.assert_close(torch.softmax(logits[b, t], dim=0), p_t, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s_last[b], s, rtol=1e-5, atol=1e-6)


def test_lecture_rnn_parameters_are_the_lectures():
    model = make("rnn-tanh", hidden_size=5)
    names = {name for name, _ in model.named_parameters()}
    assert names == {"W_sx", "W_ss", "W0_ss", "W_o", "W0_o"}
    assert set(model.state_dict()) == names  # nothing else is saved (the fused kernel's b_hh is fixed at 0)


@pytest.mark.parametrize("c", [1, 3])
def test_window_model_equals_its_linear_classifier(c):
    model = make("window", context=c)
    assert model.W_o.shape == (V, c * V) and model.W0_o.shape == (V,)
    idx = torch.randint(3, V, (2, 6))
    with torch.no_grad():
        logits, (last,) = model(idx)
        for b in range(2):
            history = [START] * c + idx[b].tolist()  # s_0 is c start symbols
            for t in range(6):
                window = history[t + 1 : t + 1 + c]  # the last c characters, ending with x_t
                s_t = torch.cat([F.one_hot(torch.tensor(i), V).float() for i in window])
                torch.testing.assert_close(logits[b, t], model.W_o @ s_t + model.W0_o, rtol=1e-5, atol=1e-5)
            assert last[b].tolist() == history[-c:]


def test_window_model_initial_state_is_start_symbols():
    model = make("window", context=3)
    (state,) = model.initial_state(2)
    assert state.dtype == torch.long and state.tolist() == [[START] * 3] * 2


def test_flops_per_char_are_positive():
    for kind in ALL_KINDS:
        assert make(kind).flops_per_char() > 0
    m = make("rnn-tanh", hidden_size=7)
    assert m.flops_per_char() == 2 * (7 * V + 7 * 7 + V * 7)


# ------------------------------------------------------------------------------ output layers


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tied_output_predicts_with_the_input_embedding(kind):
    model = make(kind, output="tied", hidden_size=16, embedding_size=6)
    assert model.head.weight.shape == (6, 16) and model.output_bias.shape == (V,)
    h = torch.randn(4, 16)
    want = (model.head(h)) @ model.embedding.weight.t() + model.output_bias  # E (P h + b) + W0^o
    torch.testing.assert_close(model.output(h), want)
    # A symbol never read still learns its one vector from being predicted.
    model.train()
    x = torch.full((2, 5), 4)
    y = torch.full((2, 5), 7)
    logits, _ = model(x)
    F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).backward()
    assert model.embedding.weight.grad[7].abs().sum() > 0
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in make(kind, output="full", hidden_size=16, embedding_size=6).parameters()
    )


def test_auto_output_ties_large_alphabets_only():
    from nextchar.models import TIED_FROM, resolved_output

    assert resolved_output(ModelConfig(kind="lstm", vocab_size=TIED_FROM - 1)) == "full"
    assert resolved_output(ModelConfig(kind="lstm", vocab_size=TIED_FROM)) == "tied"
    assert resolved_output(ModelConfig(kind="gru", vocab_size=TIED_FROM, output="full")) == "full"
    assert resolved_output(ModelConfig(kind="rnn", vocab_size=TIED_FROM, output="tied")) == "full"
    big = make("lstm", vocab_size=TIED_FROM + 5, hidden_size=64, embedding_size=8)
    assert isinstance(big, GatedRNN) and big.head.out_features == 8
    full = make("lstm", vocab_size=TIED_FROM + 5, hidden_size=64, embedding_size=8, output="full")
    assert big.flops_per_char() < full.flops_per_char() / 3
    with pytest.raises(ValueError, match="unknown output layer 'sampled'"):
        make("lstm", output="sampled")


def test_a_config_from_before_the_choice_of_output_is_full():
    saved = model_config("lstm", vocab_size=2000).to_json()
    del saved["output"]
    config = ModelConfig.from_json(saved)
    assert config.output == "full"
    assert build_model(config).head.out_features == 2000  # the layer such a checkpoint holds
