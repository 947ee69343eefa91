"""The fast one-character step computes what the model's own forward computes."""

import pytest
import torch

from nextchar.models import ModelConfig, build_model
from nextchar.stepper import PRECISIONS, Stepper


def make(kind: str, layers: int, output: str = "full") -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind, vocab_size=11, hidden_size=16, num_layers=layers, embedding_size=6, dropout=0.5, output=output
    )
    return build_model(config).eval()


def random_state(model, rows: int):
    return tuple(torch.randn_like(s) for s in model.initial_state(rows))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("output", ["full", "tied"])
def test_step_equals_forward(kind, layers, output):
    model = make(kind, layers, output)
    stepper = Stepper(model)
    idx = torch.randint(0, 11, (5, 1))
    state = random_state(model, 5)
    with torch.inference_mode():
        want_logits, want_state = model(idx, state)
        got_logits, got_state = stepper(idx, state)
    assert got_logits.shape == want_logits.shape == (5, 1, 11)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_state, want_state, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_step_follows_weights_changed_in_place():
    """The input table is a cache of the weights: an in-place update (adaptation) refreshes it."""
    model = make("lstm", 1)
    stepper = Stepper(model)
    idx, state = torch.tensor([[3], [4]]), random_state(model, 2)
    before, _ = stepper(idx, state)
    with torch.no_grad():
        model.embedding.weight[3] += 1.0
        model.rnn.bias_hh_l0 -= 0.5
    after, _ = stepper(idx, state)
    want, _ = model(idx, state)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)


def test_longer_inputs_and_training_mode_use_the_model():
    model = make("gru", 2)
    stepper = Stepper(model)
    idx, state = torch.randint(0, 11, (2, 7)), random_state(model, 2)
    with torch.inference_mode():
        torch.testing.assert_close(stepper(idx, state)[0], model(idx, state)[0])
    model.train()  # dropout on: the fast path (eval only) must not be taken
    torch.manual_seed(1)
    got = stepper(idx[:, :1], state)[0]
    torch.manual_seed(1)
    want = model(idx[:, :1], state)[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_low_precision_steps_are_close_to_fp32(kind, precision):
    """bf16/int8 products, fp32 gates and states: close to the model's own answer."""
    model = make(kind, 2)
    stepper = Stepper(model, precision)
    idx, state = torch.randint(0, 11, (4, 1)), random_state(model, 4)
    with torch.inference_mode():
        want_logits, want_state = model(idx, state)
        got_logits, got_state = stepper(idx, state)
    assert stepper.precision == precision
    assert got_logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in got_state)
    torch.testing.assert_close(got_logits, want_logits, rtol=0.05, atol=0.05)
    for got, want in zip(got_state, want_state, strict=True):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    assert not torch.equal(got_logits, want_logits)  # it did compute in low precision


def test_low_precision_copies_follow_the_weights():
    model = make("lstm", 1)
    stepper = Stepper(model, "int8")
    idx, state = torch.tensor([[3], [4]]), random_state(model, 2)
    before, _ = stepper(idx, state)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(-1.0)
    after, _ = stepper(idx, state)
    want, _ = model(idx, state)
    torch.testing.assert_close(after, want, rtol=0.05, atol=0.05)
    assert not torch.allclose(before, after, atol=0.05)


def test_precision_is_checked_and_only_gated_models_use_it():
    with pytest.raises(ValueError, match="precision must be one of"):
        Stepper(make("lstm", 1), "fp16")
    rnn = build_model(ModelConfig(kind="rnn", vocab_size=11, hidden_size=16)).eval()
    assert Stepper(rnn, "int8").precision == "fp32"


def test_a_view_sharing_weights_shares_what_is_made_from_them():
    """A per-person view owns its output layer only: the table and int8 copies are not made again."""
    from nextchar.completion.personal import personal_view

    model = make("lstm", 1)
    base = Stepper(model, "int8")
    view = personal_view(model, ["head.weight", "head.bias"])
    mine = Stepper(view, "int8", share=base)
    idx, state = torch.tensor([[3], [4]]), random_state(model, 2)
    with torch.no_grad():
        view.head.bias += 1.0  # the person's own weights change
    got, _ = mine(idx, state)
    torch.testing.assert_close(got, view(idx, state)[0], rtol=0.05, atol=0.05)
    assert mine.prepared["table"] is base.prepared["table"]
    assert mine.prepared["weight_hh_l0"] is base.prepared["weight_hh_l0"]
    # A view that owns a shared weight makes its own copy (and leaves the base's alone).
    own = personal_view(model, ["rnn.weight_hh_l0"])
    with torch.no_grad():
        own.rnn.weight_hh_l0.mul_(-1.0)
    theirs = Stepper(own, "int8", share=base)
    theirs(idx, state)
    assert theirs.prepared["weight_hh_l0"] is not base.prepared["weight_hh_l0"]
    torch.testing.assert_close(base(idx, state)[0], model(idx, state)[0], rtol=0.05, atol=0.05)


def test_int8_without_its_kernels_is_a_clear_error(monkeypatch):
    """A PyTorch without FBGEMM's int8 operator: auto falls back to fp32, int8 says why not."""
    from nextchar import stepper

    monkeypatch.setattr(stepper, "_LINEAR_DYNAMIC", None)
    model = make("lstm", 1)
    assert stepper.auto_precision(model) == "fp32"
    assert Stepper(model, "auto").precision == "fp32"
    with pytest.raises(ValueError, match="int8 needs PyTorch's FBGEMM int8 kernels"):
        Stepper(model, "int8")


def test_precisions_are_those_the_parsers_offer():
    # completion.config spells the tuple out so that building a parser imports no torch; the
    # stepper, below completion, cannot import it from there: the two must agree.
    from nextchar.completion.config import PRECISIONS as CONFIG_PRECISIONS

    assert PRECISIONS == CONFIG_PRECISIONS
