"""eval-complete: the typing simulation's metrics, the trie baseline, and the three commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.completion.completer import Completer
from nextchar.errors import UserError
from nextchar.evaluation.keystrokes import (
    CompleterPredictor,
    Predictor,
    TriePredictor,
    evaluate_completion,
    format_table,
    prediction_points,
    typing_latency,
    word_spans,
)
from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config


def test_word_spans_and_prediction_points() -> None:
    assert word_spans("ab cd, e") == [(0, 2), (3, 5), (7, 8)]
    assert prediction_points("ab cd", "line") == {1: (5, 1), 2: (5, 2), 3: (5, 3), 4: (5, 4)}
    assert prediction_points("ab cd", "word") == {1: (2, 1), 4: (5, 1)}
    assert prediction_points("ab cd", "phrase", max_words=2) == {1: (5, 1), 2: (5, 2), 4: (5, 1)}
    assert prediction_points("a", "line") == {}


class Scripted(Predictor):
    """Suggestions looked up in a table by the typed text."""

    name = "scripted"

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def keystroke(self, ch: str, typed: str) -> list[str]:
        return self.table.get(typed, [])


def test_metrics_on_a_hand_computed_case() -> None:
    predictor = Scripted({"a": ["ax", "abcd "], "ab": ["abcd"], "abc": ["abx"]})
    result = evaluate_completion(["abcd", "xy"], predictor, "line", k=2)
    assert predictor.started == 2
    # "abcd": type a (1), accept at rank 2 (1) → 2 keystrokes; "xy": never suggested → 2.
    assert result.keystrokes == 4 and result.chars == 6
    assert result.ksr == pytest.approx(1 - 4 / 6)
    # prediction points: abcd at 1, 2, 3 (ranks 2, 1, none) and xy at 1 (none)
    assert result.prediction_points == 4
    assert result.mrr == pytest.approx((0.5 + 1.0) / 4)
    assert result.success_at_1 == {"1": 0.0, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0}
    assert result.success_at_k == {"1": 0.5, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0}
    assert result.targets == 2
    assert set(result.latency_ms) == {"p50", "p95", "p99"}
    assert set(result.to_json()) >= {"ksr", "mrr", "success_at_1", "success_at_k", "latency_ms", "targets"}
    assert "scripted" in format_table([result])


def test_only_the_first_k_count() -> None:
    result = evaluate_completion(["abcd"], Scripted({"a": ["x", "y", "abcd"]}), "line", k=2)
    assert result.ksr == 0.0 and result.mrr == 0.0


def test_word_mode_keystrokes() -> None:
    # "ab cde": type a (1), "ab" offered → accept (2), type " " (3) and c (4), "ab cde" offered
    # → accept (5): 5 keystrokes for 6 characters.
    predictor = Scripted({"a": ["ab"], "ab c": ["ab cde"]})
    result = evaluate_completion(["ab cde"], predictor, "word", k=1)
    assert result.keystrokes == 5
    assert result.ksr == pytest.approx(1 - 5 / 6)


def test_bad_evaluation_input() -> None:
    with pytest.raises(UserError):
        evaluate_completion([], Scripted({}), "line", 5)
    with pytest.raises(UserError):
        evaluate_completion(["ab"], Scripted({}), "line", 0)


def test_trie_baseline_completes_only_what_it_has_seen() -> None:
    trie = TriePredictor.from_lines(["emma", "emma", "emily", "ava"], "line", k=2)
    assert trie.keystroke("m", "em") == ["emma", "emily"]  # by frequency
    assert trie.keystroke("a", "ava") == []  # the typed text itself is not a suggestion
    seen = evaluate_completion(["emma", "emily"], trie, "line", k=2)
    unseen = evaluate_completion(["zoe", "emilia"], trie, "line", k=2)
    assert seen.ksr > 0.4 and unseen.ksr == 0.0
    words = TriePredictor.from_lines(["the cat sat", "the cat ran"], "word", k=3)
    assert words.keystroke("c", "a c") == ["a cat"]
    phrases = TriePredictor.from_lines(["the cat sat down"], "phrase", k=3, max_words=2)
    assert phrases.keystroke("c", "x the c") == ["x the cat sat"]
    assert phrases.keystroke("d", "x d") == ["x down"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval-models")
    corpus = root / "names.txt"
    corpus.write_text(NAMES * 3)
    lstm, window = root / "lstm", root / "window"
    source = {"corpus": str(corpus), "val": None, "format": "lines", "val_fraction": 0.1}
    text = corpus.read_text()
    cut = text.rindex("emma")
    train(
        text[:cut],
        text[cut:],
        lstm,
        train_config(steps=40),
        model_config("lstm"),
        "lines",
        source=source,
        progress=False,
    )
    train(text[:cut], text[cut:], window, train_config(steps=40), model_config("window"), "lines", progress=False)
    return corpus, lstm, window


def test_completer_predictor_and_latency(models: tuple[Path, Path, Path]) -> None:
    _, lstm, _ = models
    completer = Completer(load_checkpoint(lstm))
    result = evaluate_completion(NAMES.split()[:4], CompleterPredictor(completer, "line", 5), "line", 5)
    assert 0.0 <= result.ksr < 1.0 and result.latency_ms["p99"] >= result.latency_ms["p50"] > 0
    lat = typing_latency(completer, "abcdefghij" * 20, [1, 10, 100], keystrokes=5)
    assert set(lat) == {1, 10, 100} and all(v["p50"] > 0 for v in lat.values())
    with pytest.raises(UserError):
        typing_latency(completer, "abc", [10], keystrokes=5)


# ---------------------------------------------------------------------------------- commands


def test_eval_complete_command_json(
    models: tuple[Path, Path, Path], write_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, lstm, window = models
    test_file = write_file("test.txt", "emma\nmia\nzoe\n")
    assert main(["eval-complete", str(test_file), "-m", str(lstm), "--baseline-window", str(window), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ksr", "mrr", "success_at_1", "success_at_k", "latency_ms", "targets"):
        assert key in out
    assert set(out["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(out["baselines"]) == {"trie", "window"}  # the trie from the recorded training corpus
    assert out["targets"] == 3 and out["baselines"]["trie"]["ksr"] > 0  # emma and mia were in training


def test_eval_complete_command_table(
    models: tuple[Path, Path, Path], write_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, _, window = models
    test_file = write_file("test.txt", "emma\nmia\n")
    assert main(["eval-complete", str(test_file), "-m", str(window), "--mode", "word", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "KSR" in out and "model (window)" in out
    assert "trie baseline skipped" in out  # this one recorded no corpus
    assert main(["eval-complete", str(test_file), "-m", str(window), "--baseline-trie", str(corpus)]) == 0
    assert "trie" in capsys.readouterr().out


def test_complete_command(
    models: tuple[Path, Path, Path], write_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, lstm, _ = models
    assert main(["complete", "em", "-m", str(lstm), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[1].startswith("em") for line in lines)
    assert main(["complete", "", "-m", str(lstm), "--json", "--mode", "word", "-k", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 50 and out["suggestions"]
    assert set(out["suggestions"][0]) == {"text", "completion", "logprob", "score", "corrected"}
    lexicon = write_file("lex.txt", "emma\t3\nemily\n")
    assert main(["complete", "em", "-m", str(lstm), "--lexicon", str(lexicon), "--typos", "--json"]) == 0
    assert {s["text"] for s in json.loads(capsys.readouterr().out)["suggestions"]} <= {"emma", "emily"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["complete", "em", "-k", "0"], "k must be at least 1"),
        (["complete", "em", "--lexicon", "LEX"], "lex.txt:2: bad weight"),
        (["complete", "em", "--beam", "0"], "beam_width"),
        (["eval-complete", "MISSING"], "no such file"),
        (["eval-complete", "EMPTY"], "empty"),
    ],
)
def test_command_errors_are_one_line(
    models: tuple[Path, Path, Path],
    write_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    _, lstm, _ = models
    replace = {
        "LEX": str(write_file("lex.txt", "ok\nbad\tx\n")),
        "MISSING": str(write_file("a", "x").parent / "nope"),
        "EMPTY": str(write_file("empty.txt", b"")),
    }
    assert main([replace.get(a, a) for a in argv] + ["-m", str(lstm)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_seen_and_unseen_lines_are_reported_apart():
    """A line trie completes only the lines it was built from: all it saves is on seen lines."""
    training = ["isabella", "charlotte", "evelyn"]
    trie = TriePredictor.from_lines(training, "line", k=3)
    lines = ["isabella", "charlotte", "amelia", "harper"]
    result = evaluate_completion(lines, trie, "line", 3, seen=set(training))
    seen, unseen = result.groups["seen"], result.groups["unseen"]
    assert (seen["targets"], unseen["targets"]) == (2, 2)
    assert seen["ksr"] > 0.5 and unseen["ksr"] == 0.0
    assert seen["keystrokes"] + unseen["keystrokes"] == result.keystrokes
    assert evaluate_completion(lines, trie, "line", 3).groups == {}  # without the training lines: no split


def test_seen_and_unseen_words_by_hand():
    """Word mode: a target is seen when its word is a training word; the group holds the
    word's characters and the keystrokes spent at them, not the boundaries between words."""
    trie = TriePredictor.from_lines(["the cat"] * 2, "word", k=3)
    result = evaluate_completion(["the dog cat"], trie, "word", 3, seen=["the cat"])
    seen, unseen = result.groups["seen"], result.groups["unseen"]
    # "the": t, then "the" accepted (2 keystrokes); "cat": c, accept (2); "dog" typed (3); two spaces.
    assert (seen["targets"], seen["chars"], seen["keystrokes"]) == (2, 6, 4)
    assert (unseen["targets"], unseen["chars"], unseen["keystrokes"]) == (1, 3, 3)
    assert result.keystrokes == 4 + 3 + 2
    assert seen["ksr"] == 1 - 4 / 6 and unseen["ksr"] == 0.0


def test_next_word_mode_also_predicts_each_word_before_it_is_begun():
    line = "the cat sat"
    word = prediction_points(line, "word")
    assert prediction_points(line, "next-word") == {**word, 4: (7, 0), 8: (11, 0)}  # after each space
    trie = TriePredictor.from_lines(["the cat sat"] * 3, "next-word", k=3)
    by_mode = {mode: evaluate_completion([line], trie, mode, 3).ksr for mode in ("word", "next-word")}
    assert by_mode["next-word"] > by_mode["word"]  # "cat" and "sat" are offered before a letter of them


def test_the_memory_alone_is_the_trie_on_lines_it_has_seen_and_follows_backspaces(tmp_path):
    import torch

    from nextchar.checkpoint import load_checkpoint, save_checkpoint
    from nextchar.completion.completer import Completer
    from nextchar.evaluation.keystrokes import MemoryPredictor
    from nextchar.models import build_model
    from nextchar.text import Vocabulary
    from nextchar.training.memory import remember
    from tests.helpers import model_config

    train = ["the cat sat", "the cat ran", "the cat sat", "the dog sat", "a cow ran"]
    text = "\n".join(train) + "\n"
    vocab = Vocabulary.from_text(text)
    torch.manual_seed(0)
    save_checkpoint(tmp_path, build_model(model_config("lstm", vocab_size=len(vocab))), vocab, "lines")
    remember(tmp_path, text, "the dog ran\n")
    completer = Completer(load_checkpoint(tmp_path))
    memory = MemoryPredictor(completer, "line", 5)
    memory.start()
    assert memory.keystroke("t", "t")[:2] == ["the cat sat", "the cat ran"]  # commonest first
    assert memory.keystroke("h", "th")[0] == "the cat sat"
    assert memory.keystroke("x", "tx") == []  # a backspace and another key: matched afresh
    seen = ["the cat sat", "the dog sat", "a cow ran"]
    for mode in ("line", "word"):
        trie = evaluate_completion(seen, TriePredictor.from_lines(train, mode, 5), mode, 5)
        alone = evaluate_completion(seen, MemoryPredictor(completer, mode, 5), mode, 5)
        assert alone.keystrokes == trie.keystrokes < trie.chars
    with pytest.raises(UserError, match="needs a checkpoint with a memory"):
        MemoryPredictor(Completer(load_checkpoint(tmp_path), memory=False), "line", 5)
