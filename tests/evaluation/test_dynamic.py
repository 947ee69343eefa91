"""Dynamic evaluation (evaluation/dynamic.py, adapt.py, cli/adapt.py): no leak, it helps, divergence, eval --adapt.

The no-leak test is the one that matters: the adapted score of every character must not depend
on that character or on anything after it. It runs against dynamic_evaluate and, to show the
test has teeth, against a deliberately leaky variant (learn, then score) that it must catch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nextchar.adapt import AdaptConfig, Adapter, gradient_statistics
from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.data.batches import IGNORE, encode_corpus, stream_eval_layout
from nextchar.errors import UserError
from nextchar.evaluation.bpc import evaluate_stream
from nextchar.evaluation.dynamic import DynamicEvalResult, dynamic_evaluate, iter_windows
from nextchar.models import CharModel, build_model
from nextchar.text import Vocabulary
from tests.helpers import NAMES, PROSE, TINY_TRAIN_FLAGS, model_config

KINDS = ["window", "rnn", "gru", "lstm"]
TEXT = PROSE * 2  # ~1,300 characters: repetition gives adaptation something to learn


def tiny_model(kind: str, vocab: Vocabulary, seed: int = 0, output: str = "full") -> CharModel:
    torch.manual_seed(seed)
    model = build_model(model_config(kind, vocab_size=len(vocab), hidden_size=16, embedding_size=8, output=output))
    return model.eval()


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_text(PROSE + NAMES)


def sgd(**overrides: object) -> AdaptConfig:
    settings: dict = {"rule": "sgd", "lr": 0.5, "window": 16, "decay": 0.0}
    settings.update(overrides)
    return AdaptConfig(**settings)


# ------------------------------------------------------------------------------ no leak


def leaky_evaluate(model: CharModel, encoded, config: AdaptConfig) -> torch.Tensor:
    """WRONG on purpose: learns from each window before scoring it (what the no-leak test must catch)."""
    import copy

    work = copy.deepcopy(model).eval()
    adapter = Adapter(work, config)
    state, out = None, []
    for x, y, carry in iter_windows(encoded, config):
        start = state if carry and state is not None else work.initial_state(x.shape[0])
        logits, _ = work(x, start)
        adapter.learn(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE))
        logits, new = work(x, start)  # scored by weights that have seen this window: a leak
        state = tuple(s.detach() for s in new) if carry else None
        flat, fy = logits.detach().reshape(-1, logits.shape[-1]), y.reshape(-1)
        keep = fy != IGNORE
        out.append(torch.log_softmax(flat, -1)[keep].gather(1, fy[keep, None]).squeeze(1))
    return torch.cat(out)


def honest_evaluate(model: CharModel, encoded, config: AdaptConfig) -> torch.Tensor:
    result = dynamic_evaluate(model, encoded, config, static=False, record=True)
    assert result.logprobs is not None
    return result.logprobs


def stream_reading_order(n_targets: int, config: AdaptConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each recorded score (reading order): its target index, window and stream."""
    index = torch.arange(n_targets + 1)  # the stream layout of target positions 0..n-1
    _, y = stream_eval_layout(index, config.streams)
    targets, windows, streams = [], [], []
    for w, start in enumerate(range(0, y.shape[1], config.window)):
        block = y[:, start : start + config.window]
        rows = torch.arange(block.shape[0])[:, None].expand_as(block)
        keep = block.reshape(-1) != IGNORE
        targets.append(block.reshape(-1)[keep] - 1)
        streams.append(rows.reshape(-1)[keep])
        windows.append(torch.full((int(keep.sum()),), w))
    return torch.cat(targets), torch.cat(windows), torch.cat(streams)


def read_before(n_targets: int, config: AdaptConfig, changed_target: int) -> torch.Tensor:
    """Mask of the scores computed before the model could have seen target `changed_target`.

    Those of earlier windows, and in its own window those of other streams (scored in the
    same pass, independent rows) and of earlier positions of its own stream.
    """
    targets, windows, streams = stream_reading_order(n_targets, config)
    at = int((targets == changed_target).nonzero())
    w, s = windows[at], streams[at]
    return (windows < w) | ((windows == w) & ((streams != s) | (targets < changed_target)))


def leaks(evaluate, model: CharModel, vocab: Vocabulary, config: AdaptConfig, position: int) -> bool:
    """True when changing the character at `position` changes a score read before it."""
    text = TEXT
    changed = text[:position] + ("z" if text[position] != "z" else "q") + text[position + 1 :]
    a = evaluate(model, encode_corpus(text, vocab, "text"), config)
    b = evaluate(model, encode_corpus(changed, vocab, "text"), config)
    assert a.shape == b.shape == (len(text),)
    # The character at text[position] is encoded at index position + 1: it is target `position`.
    before = read_before(len(text), config, position)
    assert before.sum() > 0
    return not torch.allclose(a[before], b[before], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("streams", [1, 3])
def test_no_leak_scores_never_depend_on_what_they_score(kind, streams, vocab):
    model = tiny_model(kind, vocab)
    config = sgd(streams=streams)
    # A change in the middle of a window: the scores before it in that window are the test.
    for position in (5 * config.window + 7, 9 * config.window + 1):
        assert not leaks(honest_evaluate, model, vocab, config, position)
    # The test has teeth: learning before scoring is caught.
    assert leaks(leaky_evaluate, model, vocab, config, 5 * config.window + 7)


def test_no_leak_in_lines_format(vocab):
    model = tiny_model("lstm", vocab)
    config = sgd(window=12)
    lines = NAMES.split()
    k = 6  # change the 3rd letter of line k; its window holds earlier lines too
    changed = [*lines[:k], lines[k][:2] + "z" + lines[k][3:], *lines[k + 1 :]]

    def scores(evaluate, names):
        return evaluate(model, encode_corpus("\n".join(names) + "\n", vocab, "lines"), config)

    before = sum(len(line) + 1 for line in lines[:k]) + 2  # every score before the changed letter
    for evaluate, leaky in ((honest_evaluate, False), (leaky_evaluate, True)):
        a, b = scores(evaluate, lines), scores(evaluate, changed)
        assert torch.allclose(a[:before], b[:before], rtol=0, atol=1e-6) is not leaky
        assert not torch.allclose(a[before:], b[before:])  # the change does matter after it


@pytest.mark.parametrize("kind", KINDS)
def test_first_window_is_scored_by_the_trained_model(kind, vocab):
    model = tiny_model(kind, vocab)
    encoded = encode_corpus(TEXT, vocab, "text")
    config = sgd(window=20)
    logprobs = honest_evaluate(model, encoded, config)
    with torch.no_grad():
        logits, _ = model(encoded[None, :-1])
    static = torch.log_softmax(logits[0], -1).gather(1, encoded[1:, None]).squeeze(1)
    assert torch.allclose(logprobs[:20], static[:20], atol=1e-5)
    assert not torch.allclose(logprobs[40:], static[40:], atol=1e-3)  # later windows are adapted


# ------------------------------------------------------------------------------ it works


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_adaptation_lowers_bpc_on_repeated_text_and_leaves_the_model_alone(kind, rule, vocab):
    model = tiny_model(kind, vocab)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    encoded = encode_corpus(TEXT, vocab, "text")
    config = (
        sgd()
        if rule == "sgd"
        else AdaptConfig(rule="rms", lr=0.005, window=16, decay=0.0, stat_windows=5, stat_batch=2)
    )
    # The statistics come from "training text" like the evaluated one, as they would in use.
    stats = gradient_statistics(model, encode_corpus(PROSE, vocab, "text"), config) if rule == "rms" else None
    result = dynamic_evaluate(model, encoded, config, stats)
    assert isinstance(result, DynamicEvalResult)
    assert result.static is not None and result.static.chars == result.adapted.chars == len(TEXT)
    assert result.adapted.bpc < result.static.bpc - 0.3
    assert result.windows == math.ceil(len(TEXT) / 16) and result.steps == result.windows
    assert result.rollbacks == 0 and not result.stopped
    assert result.adapt_seconds > 0 and result.static_seconds > 0 and result.cost_ratio > 0
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert json.loads(json.dumps(result.to_json()))["adapted"]["bpc"] == result.adapted.bpc


def test_lines_format_and_zero_window_edge_cases(vocab):
    model = tiny_model("gru", vocab)
    lines = encode_corpus(NAMES * 2, vocab, "lines")
    result = dynamic_evaluate(model, lines, sgd(window=1))  # one line per window
    assert result.windows == len(lines)
    assert result.adapted.chars == result.static.chars == sum(len(line) + 1 for line in lines)
    assert result.adapted.bpc < result.static.bpc
    one = dynamic_evaluate(model, encode_corpus("é", vocab, "text"), sgd(window=50))  # a single (unknown) character
    assert one.adapted.chars == 1 and one.windows == 1 and math.isfinite(one.adapted.bpc)


@pytest.mark.parametrize("kind", [*KINDS, "lstm-tied"])
def test_output_only_adaptation_changes_only_the_output_layer(kind, vocab):
    kind, _, output = kind.partition("-")
    model = tiny_model(kind, vocab, output=output or "full")
    adapter = Adapter(model, sgd(params="output"))
    names = set(adapter.params)
    assert names and names <= {"W_o", "W0_o", "head.weight", "head.bias", "output_bias"}
    if output == "tied":  # P, b and W0^o; never the embedding, which the state reads
        assert names == {"head.weight", "head.bias", "output_bias"}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = encode_corpus(TEXT[:40], vocab, "text")
    logits, _ = model(x[None, :-1])
    assert adapter.learn(F.cross_entropy(logits[0], x[1:])).applied
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) is (name not in names), name
    adapter.reset()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_gradient_statistics_cover_the_adapted_parameters(vocab):
    model = tiny_model("lstm", vocab)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    config = AdaptConfig(window=8, stat_windows=4, stat_batch=3)
    stats = gradient_statistics(model, encode_corpus(PROSE, vocab, "text"), config)
    assert stats.windows == 4 and set(stats.rms) == {name for name, _ in model.named_parameters()}
    assert all(
        r.shape == p.shape and (r >= 0).all()
        for (name, p), r in zip(model.named_parameters(), stats.rms.values(), strict=True)
    )
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    lines = gradient_statistics(model, encode_corpus(NAMES, vocab, "lines"), config)
    assert lines.windows == 4


# ------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_divergent_settings_are_rolled_back_and_reported(kind, vocab):
    model = tiny_model(kind, vocab)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    result = dynamic_evaluate(model, encode_corpus(TEXT, vocab, "text"), sgd(lr=1e12, max_rollbacks=3))
    assert result.rollbacks > 0 and result.stopped
    assert math.isfinite(result.adapted.bpc)
    # Every score came from weights that had scored sanely: never worse than diverged weights would.
    assert result.adapted.bpc < 3 * math.log2(len(vocab))
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


def test_a_nan_gradient_is_rolled_back_not_applied(vocab):
    model = tiny_model("gru", vocab)
    adapter = Adapter(model, sgd())
    weights = [p.detach().clone() for p in model.parameters()]
    x = encode_corpus(TEXT[:30], vocab, "text")
    logits, _ = model(x[None, :-1])
    adapter.checkpoint()
    outcome = adapter.learn(F.cross_entropy(logits[0], x[1:]) * float("nan"))
    assert not outcome.applied and outcome.rolled_back and adapter.rollbacks == 1
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rule": "adam"}, "rule must be one of rms, sgd"),
        ({"lr": 0.0}, "AdaptConfig.lr must be a positive number"),
        ({"lr": float("nan")}, "AdaptConfig.lr must be a positive number"),
        ({"decay": 1.0}, "AdaptConfig.decay must be in [0, 1)"),
        ({"window": 0}, "window must be a whole number ≥ 1"),
        ({"params": "some"}, "adapted parameters must be one of all, output"),
    ],
)
def test_bad_settings_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        AdaptConfig(**settings)


def test_rms_without_statistics_is_a_user_error(vocab):
    with pytest.raises(UserError, match="needs gradient statistics"):
        dynamic_evaluate(tiny_model("rnn", vocab), encode_corpus(PROSE, vocab, "text"), AdaptConfig(rule="rms"))


# ------------------------------------------------------------------------------ the eval command


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_adapt_prints_static_and_adapted(capsys, text_model_dir, write_file):
    corpus = write_file("doc.txt", PROSE * 2)
    code, out, _ = run(
        capsys,
        "eval",
        str(corpus),
        "-m",
        str(text_model_dir),
        "--adapt",
        "--adapt-rule",
        "sgd",
        "--adapt-lr",
        "0.3",
        "--adapt-window",
        "32",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["static", "adapted"]
    static, adapted = (float(v) for v in lines[1].split()[1:])
    # The static column is the trained model read as one stream, as the adapted one is read.
    ckpt = load_checkpoint(text_model_dir)
    one_stream = evaluate_stream(ckpt.model, encode_corpus(PROSE * 2, ckpt.vocab, "text"), n_streams=1)
    assert one_stream.bpc == pytest.approx(static, abs=1e-4)
    assert adapted < static
    assert "adaptation: sgd, lr 0.3, window 32" in out and "0 rollbacks" in out


@pytest.mark.slow
def test_eval_adapt_rms_json_with_a_training_text(capsys, text_model_dir, write_file):
    corpus, train_text = write_file("doc.txt", PROSE), write_file("train.txt", PROSE)
    code, out, _ = run(
        capsys,
        "eval",
        str(corpus),
        "-m",
        str(text_model_dir),
        "--adapt",
        "--adapt-train",
        str(train_text),
        "--adapt-window",
        "16",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"static", "adapted", "config", "adapt_seconds_per_window", "cost_ratio", "stats"}
    assert result["config"]["rule"] == "rms" and result["stats"]["source"] == str(train_text)
    assert result["adapted"]["chars"] == result["static"]["chars"] == len(PROSE)


@pytest.mark.slow
def test_eval_adapt_rms_finds_the_recorded_training_corpus(capsys, tmp_path, write_file):
    corpus = write_file("corpus.txt", PROSE * 3)
    assert main(["train", str(corpus), "--out", str(tmp_path / "m"), *TINY_TRAIN_FLAGS]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(tmp_path / "m"), "--adapt", "--adapt-window", "64")
    assert code == 0 and f"from {corpus.resolve()}" in out
    corpus.unlink()  # the recorded training text is gone: say what to do instead
    evaluated = write_file("other.txt", PROSE)
    code, _, err = run(capsys, "eval", str(evaluated), "-m", str(tmp_path / "m"), "--adapt")
    assert code == 2 and "Traceback" not in err
    assert "cannot find the model's training text" in err and "--adapt-train FILE" in err


def test_eval_adapt_divergence_is_reported_not_a_crash(capsys, text_model_dir, write_file):
    corpus = write_file("doc.txt", PROSE)
    code, out, err = run(
        capsys,
        "eval",
        str(corpus),
        "-m",
        str(text_model_dir),
        "--adapt",
        "--adapt-rule",
        "sgd",
        "--adapt-lr",
        "1e12",
        "--adapt-window",
        "8",
    )
    assert code == 0
    assert "diverged" in err and "rolled back" in err and "smaller --adapt-lr" in err
    assert math.isfinite(float(out.splitlines()[1].split()[2]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapt-decay", "2"], "--adapt-decay must be in [0, 1)"),
        (["--adapt-lr", "-1"], "--adapt-lr must be a positive number"),
    ],
)
def test_eval_adapt_bad_settings_are_one_line_errors(capsys, text_model_dir, write_file, flags, message):
    corpus = write_file("doc.txt", PROSE)
    code, _, err = run(capsys, "eval", str(corpus), "-m", str(text_model_dir), "--adapt", "--adapt-rule", "sgd", *flags)
    assert code == 2 and err.strip().splitlines()[-1] == f"nextchar: error: eval: {message}, not {float(flags[1])}"


def test_eval_adapt_window_usage_error(capsys, text_model_dir, write_file):
    corpus = write_file("doc.txt", PROSE)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(corpus), "-m", str(text_model_dir), "--adapt", "--adapt-window", "0"])
    assert exc.value.code == 2
    assert "--adapt-window" in capsys.readouterr().err


def test_checkpoint_model_is_unchanged_by_eval_adapt(capsys, text_model_dir, write_file):
    before = load_checkpoint(text_model_dir).model.state_dict()
    corpus = write_file("doc.txt", PROSE)
    assert main(["eval", str(corpus), "-m", str(text_model_dir), "--adapt", "--adapt-rule", "sgd"]) == 0
    after = load_checkpoint(text_model_dir).model.state_dict()
    assert all(torch.equal(before[name], t) for name, t in after.items())


def test_eval_adapt_on_a_lines_model(capsys, lines_model_dir, write_file):
    corpus = write_file("names.txt", NAMES * 3)
    code, out, _ = run(
        capsys,
        "eval",
        str(corpus),
        "-m",
        str(lines_model_dir),
        "--adapt",
        "--adapt-rule",
        "sgd",
        "--adapt-lr",
        "0.5",
        "--adapt-window",
        "20",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    targets = sum(len(name) + 1 for name in NAMES.split()) * 3  # every letter and every <end>
    assert result["static"]["chars"] == result["adapted"]["chars"] == targets
    assert result["adapted"]["bpc"] < result["static"]["bpc"]
