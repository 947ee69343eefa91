"""The `nextchar` command end to end: every command, bad inputs, unknown characters, missing extras
(nextchar/cli/, sampling.py), and the one place the version is written."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import nextchar
from nextchar.checkpoint import BUNDLED_DIR, load_checkpoint, read_bundle
from nextchar.cli.main import main
from nextchar.sampling import mask_logits, next_char_distribution, predict, sample
from nextchar.text import END, START, UNK
from tests.helpers import NAMES, PROSE, TINY_TRAIN_FLAGS

UNSEEN = "日本語のテキスト 😀🎉 ∑"  # never in any training corpus here


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    """Exit 2 and a last line `nextchar: error: COMMAND: …` (the one form of every error) holding `message`."""
    assert code == 2
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert re.match(r"nextchar: error: [a-z-]+: ", last), last
    assert message in last


# ------------------------------------------------------------------------------ bad corpora


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"text\x00with a NUL byte", "looks like a binary file (NUL byte at offset 4)"),
        (PROSE.encode() + b"\xff and more", f"invalid UTF-8 at byte offset {len(PROSE.encode())}"),
        (b"tiny text\n", "shorter than one training window of --seq-len 16"),
    ],
    ids=["empty", "binary", "invalid-utf8", "too-short"],
)
def test_train_refuses_bad_corpus(capsys, tmp_path, write_file, content, message):
    corpus = write_file("corpus.txt", content)
    code, _, err = run(capsys, "train", str(corpus), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, message)
    if "training window" not in message:  # reading errors name the file
        assert str(corpus) in err


def test_train_refuses_missing_file_and_directory(capsys, tmp_path):
    code, _, err = run(capsys, "train", str(tmp_path / "absent.txt"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, "absent.txt: no such file")
    assert err.count("\n") == 1
    (tmp_path / "notes").mkdir()
    code, _, err = run(capsys, "train", str(tmp_path / "notes"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, "directory")  # (train also reads directories made by `nextchar prepare`)
    assert err.count("\n") == 1
    code, _, err = run(capsys, "eval", str(tmp_path / "notes"), "-m", str(tmp_path / "no-model"))
    assert_one_line_error(code, err, "directory")


def bad_outs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """A real obstacle for each way --out can be wrong: the path, and what the error says of it."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a regular file\n")
    return {
        "a file": (
            str(blocker),
            f"--out {blocker} is a file, not a directory; name a new or existing directory as --out",
        ),
        "under a file": (str(blocker / "run"), f"--out {blocker / 'run'} cannot be created: {blocker} is a file"),
        # /proc takes no new files, not even from root (the tests may run as root).
        "unwritable": (
            "/proc/nextchar-run",
            "--out /proc/nextchar-run cannot be written: making a file in /proc failed",
        ),
    }


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable"])
def test_a_bad_out_is_refused_before_the_corpus_is_read(capsys, tmp_path, write_file, case):
    out, message = bad_outs(tmp_path)[case]
    # A corpus that reading would refuse: the error being about --out shows it was never read.
    corpus = write_file("binary.bin", b"\x00" * 1000)
    code, stdout, err = run(capsys, "train", str(corpus), "--out", out, *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, message)
    assert err.count("\n") == 1 and stdout == "" and "binary" not in err
    assert err.startswith("nextchar: error: train: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["binary.bin", "notes.txt"]  # nothing written


def test_a_bad_resume_directory_says_what_to_give(capsys, tmp_path, write_file):
    blocker = write_file("run.txt", "not a run\n")
    code, _, err = run(capsys, "train", "--resume", str(blocker), "--steps", "5", "--quiet")
    assert_one_line_error(code, err, f"--resume {blocker} is a file, not a directory; name the directory of the run")


def test_train_on_a_directory_says_what_the_directory_is(capsys, tmp_path, text_model_dir, write_file):
    code, _, err = run(capsys, "train", str(text_model_dir), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS)
    expected = f"{text_model_dir} is a checkpoint, not a corpus; to continue training it use --resume {text_model_dir}"
    assert_one_line_error(code, err, expected)
    assert "prepare" not in err
    code, _, err = run(capsys, "train", str(BUNDLED_DIR), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, f"{BUNDLED_DIR} is a checkpoint, not a corpus (and keeps no state")
    write_file("texts/a.txt", PROSE)
    write_file("texts/b.txt", NAMES)
    code, _, err = run(capsys, "train", str(tmp_path / "texts"), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS)
    texts = tmp_path / "texts"
    assert_one_line_error(code, err, f"{texts} is a directory of text files, not a corpus: train on one of them, or ")
    assert f"`nextchar prepare {texts / '*.txt'} --out DIR` and train on DIR" in err
    (tmp_path / "empty").mkdir()
    write_file("empty/image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    code, _, err = run(capsys, "train", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, "is a directory with no text files in it, not a corpus; give a text file")
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_a_file_says_so(capsys, tmp_path, write_file):
    corpus = write_file("de.txt", "Guten Tag\n")
    for argv in (["complete", "Gu", "-m", str(corpus)], ["predict", "Gu", "-m", str(corpus)]):
        code, out, err = run(capsys, *argv)
        assert_one_line_error(code, err, f"{corpus}: is a file, not a checkpoint directory; give the directory")
        assert out == "" and err.startswith(f"nextchar: error: {argv[0]}: ")


@pytest.mark.slow
def test_encoding_errors_replace_goes_on(capsys, tmp_path, write_file):
    corpus = write_file("latin1.txt", "Café crème.\n".encode("latin-1") + PROSE.encode())
    code, _, err = run(capsys, "train", str(corpus), "--out", str(tmp_path / "strict"), *TINY_TRAIN_FLAGS)
    assert_one_line_error(code, err, "--encoding-errors replace")
    code, _, _ = run(
        capsys, "train", str(corpus), "--out", str(tmp_path / "m"), "--encoding-errors", "replace", *TINY_TRAIN_FLAGS
    )
    assert code == 0
    assert "\ufffd" in load_checkpoint(tmp_path / "m").vocab.chars
    # eval applies the same rule to its corpus.
    code, _, err = run(capsys, "eval", str(corpus), "-m", str(tmp_path / "m"))
    assert_one_line_error(code, err, "invalid UTF-8")
    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(tmp_path / "m"), "--encoding-errors", "replace", "--json")
    assert code == 0 and json.loads(out)["chars"] > 0


@pytest.mark.parametrize(("content", "message"), [(b"", "empty"), (b"\x00\x01", "binary"), (b"\xfe", "offset 0")])
def test_eval_refuses_bad_corpus(capsys, text_model_dir, write_file, content, message):
    corpus = write_file("bad.txt", content)
    code, out, err = run(capsys, "eval", str(corpus), "-m", str(text_model_dir))
    assert_one_line_error(code, err, message)
    assert out == "" and err.count("\n") == 1
    code, _, err = run(capsys, "eval", str(corpus.parent / "absent.txt"), "-m", str(text_model_dir))
    assert_one_line_error(code, err, "no such file")


# ------------------------------------------------------------------------------ every command


def test_train_eval_sample_predict_end_to_end(capsys, tmp_path, write_file):
    corpus = write_file("prose.txt", PROSE * 3)
    out_dir = tmp_path / "model"
    code, out, err = run(capsys, "train", str(corpus), "--out", str(out_dir), *TINY_TRAIN_FLAGS)
    assert code == 0
    assert "format text" in err and "trained 3 steps" in out and str(out_dir) in out
    assert (out_dir / "config.json").is_file() and (out_dir / "bpc.png").is_file()
    assert "large alphabet" not in err and "counting characters" not in out  # a few dozen characters
    assert load_checkpoint(out_dir).model.config.output == "full"

    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(out_dir), "--json")
    assert code == 0
    report = json.loads(out)  # the mixture of the model and its memory, each alone beside it
    assert set(report) == {"bpc", "top1", "top5", "chars", "rnn", "memory"}
    assert report["chars"] == len(PROSE * 3) and 0 < report["bpc"] < 10 and 0 <= report["top1"] <= report["top5"] <= 1
    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(out_dir), "--json", "--no-memory")
    alone = json.loads(out)
    assert set(alone) == {"bpc", "top1", "top5", "chars"} and alone == report["rnn"]
    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(out_dir))
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["bpc", "top1", "top5", "chars", "the"]

    code, out, _ = run(
        capsys, "sample", "-m", str(out_dir), "--prefix", "It was", "--length", "40", "--seed", "3", "-n", "2"
    )
    assert code == 0
    assert out.startswith("It was") and out.count("It was") >= 2 and out.endswith("\n")
    code, again, _ = run(
        capsys, "sample", "-m", str(out_dir), "--prefix", "It was", "--length", "40", "--seed", "3", "-n", "2"
    )
    assert again == out  # a seed makes samples repeatable

    code, out, _ = run(capsys, "predict", "It was the", "-m", str(out_dir), "-k", "4")
    assert code == 0 and len(out.splitlines()) == 4
    code, out, _ = run(capsys, "predict", "It was the", "-m", str(out_dir), "-k", "4", "--json")
    top = json.loads(out)
    assert [set(item) for item in top] == [{"char", "prob"}] * 4
    probs = [item["prob"] for item in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_a_large_alphabet_is_said_and_gets_a_tied_output_layer(capsys, tmp_path, write_file):
    import random

    alphabet = [chr(0x4E00 + i) for i in range(1100)]  # 1,100 Han characters
    rng = random.Random(0)
    text = "\n".join("".join(rng.choices(alphabet, k=40)) for _ in range(600)) + "\n"
    corpus = write_file("han.txt", text)
    out_dir = tmp_path / "han"
    code, out, err = run(capsys, "train", str(corpus), "--out", str(out_dir), "--format", "text", *TINY_TRAIN_FLAGS)
    assert code == 0
    note = re.search(
        r"a large alphabet, ([\d,]+) characters \(output layer tied to the input embedding\): "
        r"counting them gives ([\d.]+) BPC",
        err,
    )
    assert note is not None, err
    characters = int(note.group(1).replace(",", ""))
    assert characters == len(set(text[: int(0.9 * len(text))]))  # those of the training text
    assert abs(float(note.group(2)) - math.log2(characters + 1)) < 0.3  # uniform draws: about log2 V
    assert f"counting characters gives {note.group(2)} BPC here: the model is" in out
    ckpt = load_checkpoint(out_dir)
    assert ckpt.model.config.output == "tied" and ckpt.model.head.out_features == 8  # --embedding 8
    code, out, _ = run(capsys, "predict", alphabet[0], "-m", str(out_dir), "-k", "3")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = run(capsys, "complete", alphabet[0], "-m", str(out_dir), "-k", "2", "--mode", "word")
    assert code == 0


def test_train_lines_format_auto_and_resume(capsys, tmp_path, write_file):
    corpus = write_file("names.txt", NAMES * 2)
    out_dir = tmp_path / "names"
    code, _, err = run(capsys, "train", str(corpus), "--out", str(out_dir), *TINY_TRAIN_FLAGS)
    assert code == 0 and "format lines" in err
    assert load_checkpoint(out_dir).format == "lines"
    code, out, _ = run(capsys, "train", "--resume", str(out_dir), "--steps", "5", "--quiet")
    assert code == 0 and "trained 5 steps" in out
    meta, _ = read_bundle(out_dir / "resume", json_name="state.json")
    assert meta["step"] == 5 and meta["format"] == "lines"
    code, _, err = run(capsys, "train", "--resume", str(tmp_path / "nothing"), "--steps", "5")
    assert_one_line_error(code, err, "nothing to resume")


def test_sample_in_lines_format_stops_at_end_of_line(capsys, lines_model_dir):
    code, out, _ = run(capsys, "sample", "-m", str(lines_model_dir), "--length", "50", "--seed", "0", "-n", "5")
    assert code == 0
    assert len(out.splitlines()) == 5
    assert all(len(line) <= 50 for line in out.splitlines())


@pytest.mark.parametrize("command", ["train", "eval", "sample", "predict"])
def test_help_of_each_command(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nextchar {command}")


def test_top_level_help_version_and_no_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "eval", "sample", "predict"))
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("nextchar ")
    code, out, _ = run(capsys)
    assert code == 2 and out.startswith("usage: nextchar")


@pytest.mark.parametrize(
    ("argv", "start", "end"),
    [
        (["train", "--steps", "0"], "nextchar: error: train: argument --steps: ", " (see nextchar train --help)"),
        (["predict", "x", "-k", "zero"], "nextchar: error: predict: argument -k", " (see nextchar predict --help)"),
        (["sample", "--temperature", "-1"], "nextchar: error: sample: argument --temperature: ", "sample --help)"),
        (["frobnicate"], "nextchar: error: argument COMMAND: invalid choice: 'frobnicate'", " (see nextchar --help)"),
        (["eval"], "nextchar: error: eval: the following arguments are required: CORPUS", "(see nextchar eval --help)"),
        (["lecture", "table", "ab", "--bogus"], "nextchar: error: lecture table: unrecognized arguments: --bogus", ""),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, argv, start, end):
    """argparse's usage errors have the form of every other error, and say where the usage is."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start) and err.rstrip("\n").endswith(end), err
    assert err.rstrip("\n").endswith("--help)")


@pytest.mark.slow
def test_python_dash_m_nextchar_help():
    result = subprocess.run(
        [sys.executable, "-m", "nextchar", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: nextchar")
    assert "predict" in result.stdout and result.stderr == ""


def run_without(modules: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`nextchar ARGV` in a fresh interpreter in which importing any of `modules` fails for real
    (a None in sys.modules makes `import` raise ImportError), as when an extra is not installed."""
    code = (
        f"import sys\nfor name in {modules!r}: sys.modules[name] = None\n"
        f"from nextchar.cli.main import main\nraise SystemExit(main({argv!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["serve"], "fastapi", "serve"),
        (["serve", "--port", "0"], "uvicorn", "serve"),
        (["serve"], "prometheus_client", "serve"),
        (["type"], "prompt_toolkit", "type"),
    ],
)
def test_a_command_whose_extra_is_missing_says_which_to_install(argv, missing, extra):
    result = run_without([missing], argv)
    assert result.returncode == 2
    assert result.stderr == f"nextchar: error: {argv[0]}: needs the [{extra}] extra: pip install 'nextchar[{extra}]'\n"
    assert result.stdout == ""


@pytest.mark.slow
def test_the_core_builds_every_parser_without_the_extras():
    result = run_without(["fastapi", "uvicorn", "prometheus_client", "prompt_toolkit"], ["--help"])
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "type" in result.stdout and result.stderr == ""


def test_the_version_is_written_once_in_the_package(capsys):
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nextchar.__version__"}
    assert nextchar.__version__.count(".") == 2
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"nextchar {nextchar.__version__}\n"


def test_runtime_user_errors_of_sample_and_predict(capsys, text_model_dir):
    code, _, err = run(capsys, "sample", "-m", str(text_model_dir), "--length", "-3")
    assert_one_line_error(code, err, "--length must be at least 0")
    assert sample(load_checkpoint(text_model_dir), "It", length=0) == ""


# ------------------------------------------------------------------------------ unknown characters


@pytest.mark.parametrize("fixture", ["text_model_dir", "lines_model_dir"])
def test_unknown_characters_at_prediction_time(capsys, request, write_file, fixture):
    directory = request.getfixturevalue(fixture)
    ckpt = load_checkpoint(directory)
    assert all(ckpt.vocab.encode(c) == [UNK] for c in "日😀∑")
    probs = next_char_distribution(ckpt, UNSEEN)
    assert probs.shape == (len(ckpt.vocab),) and torch.isfinite(probs).all()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert len(predict(ckpt, UNSEEN, k=3)) == 3
    text = sample(ckpt, UNSEEN, length=20, seed=1)
    assert "\ufffd" not in text and len(text) <= 20

    code, out, _ = run(capsys, "predict", UNSEEN, "-m", str(directory), "--json")
    assert code == 0 and len(json.loads(out)) == 10
    code, out, _ = run(capsys, "sample", "-m", str(directory), "--prefix", UNSEEN, "--length", "10", "--seed", "2")
    assert code == 0 and out.startswith(UNSEEN)
    corpus = write_file("unseen.txt", f"It was {UNSEEN}\nmia 😀\n")
    code, out, _ = run(capsys, "eval", str(corpus), "-m", str(directory), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["chars"] > 0 and report["bpc"] > 0


def test_mask_logits_never_emits_special_symbols():
    logits = torch.zeros(6)
    text = mask_logits(logits, "text")
    assert torch.isinf(text[[START, END, UNK]]).all() and torch.isfinite(text[3:]).all()
    lines = mask_logits(logits, "lines")
    assert torch.isinf(lines[[START, UNK]]).all() and torch.isfinite(lines[END])
    assert torch.equal(logits, torch.zeros(6))  # the caller's tensor is untouched


def test_sample_and_predict_reject_bad_arguments(text_model_dir):
    from nextchar.errors import UserError

    ckpt = load_checkpoint(text_model_dir)
    for kwargs, message in [
        ({"temperature": 0.0}, "^temperature must be positive"),
        ({"top_k": 0}, "^top_k must be at least 1"),
        ({"length": -1}, "^length must be at least 0"),
    ]:
        with pytest.raises(UserError, match=message):
            sample(ckpt, "x", **kwargs)
    with pytest.raises(UserError, match=r"^k must be at least 1"):
        predict(ckpt, "x", k=0)
    assert len(sample(ckpt, "It", length=30, top_k=1, seed=5)) == 30  # text format: never stops early
    assert sample(ckpt, "It", length=30, top_k=1, seed=5) == sample(ckpt, "It", length=30, top_k=1, seed=6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ema", "1"], "--ema must be in [0, 1), not 1.0"),
        (["--min-lr-ratio", "-0.5"], "--min-lr-ratio must be in [0, 1], not -0.5"),
    ],
)
def test_train_refuses_bad_schedule_settings(capsys, tmp_path, flags, message):
    code, _, err = run(capsys, "train", "--out", str(tmp_path / "run"), "--steps", "1", *flags)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_builds_the_memory_index_of_its_training_split_and_index_adds_one(capsys, tmp_path, write_file):
    from nextchar.checkpoint import read_memory

    corpus = write_file("prose.txt", PROSE * 3)
    out_dir = tmp_path / "model"
    code, _, _ = run(capsys, "train", str(corpus), "--out", str(out_dir), *TINY_TRAIN_FLAGS)
    assert code == 0
    (memory,), mixer = read_memory(load_checkpoint(out_dir))
    training_split = int(0.9 * len(PROSE * 3))
    assert len(memory) == training_split + 1  # <start>, then the training 90%
    assert mixer.positions == len(PROSE * 3) - training_split  # fitted on the validation 10%
    bare = tmp_path / "bare"
    code, _, _ = run(capsys, "train", str(corpus), "--out", str(bare), "--no-memory", *TINY_TRAIN_FLAGS)
    assert code == 0 and read_memory(load_checkpoint(bare)) is None
    code, out, _ = run(capsys, "index", str(corpus), "-m", str(bare))
    assert code == 0 and f"indexed {training_split + 1:,} symbols" in out and "of the validation split" in out
    (again,), _ = read_memory(load_checkpoint(bare))
    assert again.tokens.tolist() == memory.tokens.tolist()
    code, out, _ = run(capsys, "index", str(corpus), "-m", str(bare), "--whole")
    assert code == 0 and len(read_memory(load_checkpoint(bare))[0][0]) == len(PROSE * 3) + 1
    assert "of the training text, leave-one-out" in out
    code, _, err = run(capsys, "index", str(corpus), "-m", str(BUNDLED_DIR))
    assert_one_line_error(code, err, "is the bundled model, part of the installed package")
    code, _, err = run(capsys, "index", str(corpus), "-m", str(tmp_path / "absent"))
    assert_one_line_error(code, err, "no such checkpoint directory")


def test_a_prepared_corpus_is_remembered_in_shards_that_count_as_one_index(capsys, tmp_path, write_file):
    """Training on a prepared `lines` corpus indexes its training lines; `index --shard-symbols`
    cuts them into many shards, between lines, whose summed counts are the whole index's."""
    from nextchar.checkpoint import read_memory
    from nextchar.data.batches import encode_corpus
    from nextchar.data.memory import MemoryIndex, memory_tokens

    names = NAMES * 20
    corpus = write_file("names.txt", names)
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert run(capsys, "prepare", str(corpus), "--out", str(prepared), "--format", "lines", "--quiet")[0] == 0
    code, out, _ = run(capsys, "train", str(prepared), "--out", str(model), *TINY_TRAIN_FLAGS)
    assert code == 0 and "memory: " in out
    (whole,), mixer = read_memory(load_checkpoint(model))
    assert mixer.positions > 0  # fitted on the prepared corpus's validation lines
    # some eight shards: the compiled searches are compiled anew for each number of indexes
    code, out, _ = run(capsys, "index", str(prepared), "-m", str(model), "--shard-symbols", str(len(whole) // 8))
    shards, _ = read_memory(load_checkpoint(model))
    assert code == 0 and len(shards) > 5 and f"in {len(shards)} shards" in out
    assert sum(len(s) for s in shards) == len(whole)
    vocab = load_checkpoint(model).vocab
    for text in ("emma", "ol", "a"):
        symbols = [0, *vocab.encode(text)]  # "^" + text: the lines that start so
        assert sum(s.find(symbols).count for s in shards) == whole.find(symbols).count > 0
    train_lines = names.splitlines()[: int(0.9 * len(names.splitlines()))]
    expected = MemoryIndex.build(
        memory_tokens(encode_corpus("\n".join(train_lines) + "\n", vocab, "lines"), len(vocab))
    )
    assert whole.tokens.tolist() == expected.tokens.tolist()  # the training lines, as ^ line $


def test_a_prepared_text_stream_is_remembered_cut_where_shards_fill(capsys, tmp_path, write_file):
    from nextchar.checkpoint import read_memory
    from nextchar.data.prepared import PreparedCorpus

    corpus = write_file("prose.txt", PROSE * 3)
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert run(capsys, "prepare", str(corpus), "--out", str(prepared), "--format", "text", "--quiet")[0] == 0
    assert run(capsys, "train", str(prepared), "--out", str(model), "--no-memory", *TINY_TRAIN_FLAGS)[0] == 0
    assert read_memory(load_checkpoint(model)) is None
    with pytest.raises(SystemExit) as info:  # a usage error, one line
        main(["index", str(prepared), "-m", str(model), "--shard-symbols", "0"])
    assert info.value.code == 2 and "--shard-symbols: must be at least 1" in capsys.readouterr().err
    code, _, _ = run(capsys, "index", str(prepared), "-m", str(model), "--shard-symbols", "400")
    shards, _ = read_memory(load_checkpoint(model))
    tokens = PreparedCorpus.open(prepared).tokens
    joined = [t for shard in shards for t in shard.tokens.tolist()]
    assert code == 0 and [len(s) for s in shards][:-1] == [400] * (len(shards) - 1)
    assert joined == tokens[: len(joined)].tolist() and 0.85 * len(tokens) < len(joined) < len(tokens)
