"""Completers with a memory (nextchar/completion/recall.py): the searches score with the mixture."""

from __future__ import annotations

import pytest
import torch

from nextchar.checkpoint import load_checkpoint, read_memory, save_checkpoint
from nextchar.completion.completer import Completer
from nextchar.completion.recall import MixedForward
from nextchar.models import build_model
from nextchar.recall.estimator import Memory
from nextchar.stepper import Stepper
from nextchar.text import START, Vocabulary
from nextchar.training.memory import remember
from tests.helpers import PROSE, model_config


def remembering_checkpoint(tmp_path):
    vocab = Vocabulary.from_text(PROSE)
    torch.manual_seed(0)
    model = build_model(model_config("lstm", vocab_size=len(vocab)))
    save_checkpoint(tmp_path, model, vocab, "text")
    remember(tmp_path, PROSE * 2, PROSE[50:])
    return load_checkpoint(tmp_path)


def test_a_completer_mixes_the_memory_in_and_no_memory_is_the_model_alone(tmp_path):
    ckpt = remembering_checkpoint(tmp_path)
    mixed, alone = Completer(ckpt), Completer(ckpt, memory=False)
    assert isinstance(mixed.forward, MixedForward) and isinstance(alone.forward, Stepper)
    assert alone.memory == "none" and "symbols of training text" in mixed.memory
    # The untrained model knows nothing; the memory knows the text: only the mixture completes it.
    typed = "It was the best of ti"
    assert mixed.suggest(typed, 1, "word")[0].completion == "mes"
    assert alone.suggest(typed, 1, "word")[0].completion != "mes"


def test_the_state_carries_the_memory_context_exactly(tmp_path):
    ckpt = remembering_checkpoint(tmp_path)
    completer = Completer(ckpt)
    forward = completer.forward
    assert isinstance(forward, MixedForward)
    indexes, mixer = read_memory(ckpt)
    memory = Memory(indexes, len(ckpt.vocab))
    symbols = [START, *ckpt.vocab.encode("It was the age")]
    # One read of the whole text, and one character at a time through the returned states …
    whole, _ = forward(torch.tensor([symbols]), ckpt.model.initial_state(1))
    logits, state = forward(torch.tensor([symbols[:1]]), ckpt.model.initial_state(1))
    for symbol in symbols[1:]:
        logits, state = forward(torch.tensor([[symbol]]), state)
    assert torch.allclose(whole[0, -1], logits[0, -1], atol=1e-5)
    # … and both are the mixer's answer for the memory's context after those symbols.
    context = memory.start()
    for symbol in symbols:
        context = memory.push(context, symbol)
    assert forward.memory.context(state[-1][0].numpy()) == context
    rnn, _ = ckpt.model(torch.tensor([symbols]))
    expected = mixer.next_logprobs(memory, [context], torch.log_softmax(rnn[0, -1:], dim=-1))
    assert torch.allclose(logits[0, -1], expected[0], atol=1e-5)


def test_the_deadline_returns_the_best_so_far_within_its_bound(tmp_path):
    """A slowed model (20 ms a call): a search of a 50 ms deadline does not begin the round that
    would end past it (two rounds, not three), offers what it has, and says so; without a
    deadline it runs to its end."""
    import time

    ckpt = remembering_checkpoint(tmp_path)
    long = {"memory": False, "length_alpha": 1.0}  # no early stop: about 50 steps to the longest line
    exact, bounded = Completer(ckpt, **long), Completer(ckpt, **long, deadline_ms=50)
    calls = {exact: 0, bounded: 0}
    for completer in (exact, bounded):
        fast = completer.forward

        def slowed(idx, state, fast=fast, completer=completer):
            calls[completer] += 1
            time.sleep(0.020)
            return fast(idx, state)

        completer.forward = slowed
    started = time.perf_counter()
    found = bounded.suggest("It was the", 3, "line")
    took = time.perf_counter() - started
    assert calls[bounded] <= 3  # the read of the text, then rounds ending at about 20 and 40 ms
    assert took < 0.050 + 0.020 + 0.05  # the deadline, the read of the text, slack
    assert found and bounded.search_stats == {"searches": 1, "expired": 1}
    started = time.perf_counter()
    exact.suggest("It was the", 3, "line")
    assert time.perf_counter() - started > 0.5 and exact.search_stats == {"searches": 1, "expired": 0}


@pytest.mark.parametrize("mode", ["word", "line", "phrase"])
def test_a_search_past_its_deadline_with_nothing_to_offer_goes_on_until_it_has(tmp_path, mode):
    """A cold process's first model call can take longer than the whole deadline: the search
    still answers, stopping as soon as it has something (it used to stop with nothing)."""
    import time

    completer = Completer(remembering_checkpoint(tmp_path), memory=False, deadline_ms=1)
    fast = completer.forward

    def slowed(idx, state):  # every call alone is past the deadline
        time.sleep(0.005)
        return fast(idx, state)

    completer.forward = slowed
    found = completer.suggest("It was the", 3, mode)
    assert found and all(s.completion.strip() for s in found), found
    assert completer.search_stats == {"searches": 1, "expired": 1}


def test_a_persons_memory_holds_what_they_taught_and_no_one_elses(tmp_path):
    from nextchar.completion.personal import PersonalCompleters

    people = PersonalCompleters(Completer(remembering_checkpoint(tmp_path)))
    alice, bob = people.get("alice"), people.get("bob")
    typed = "a fresh sandw"

    def completes(person):
        return [s.completion for s in person.completer.suggest(typed, 3, "word")]

    assert "ich" not in completes(alice)  # the training text has no sandwich
    before = alice.owned_bytes()
    alice.learn("a fresh sandwich, a fresh ostrich.\n")
    assert completes(alice)[0] == "ich"  # recalled from what alice taught, after she taught it
    assert "ich" not in completes(bob) and alice.owned_bytes() > before
    people.reset("alice")  # forgets the memory with the weights
    assert "ich" not in completes(people.get("alice")) and people.get("alice").owned_bytes() == before
    carol = people.get("carol")
    assert carol.memory is not None
    carol.memory.limit = 60  # bounded: the oldest lines go first
    for i in range(10):
        carol.learn(f"line {i} of what carol typed.\n")
    assert 0 < carol.memory.online_symbols <= 60


def memory_after(text: str, typed: str):
    """(vocabulary, a memory of `text`, its context after "^" + `typed`)."""
    from nextchar.data.batches import encode_corpus
    from nextchar.data.memory import MemoryIndex, memory_tokens

    vocab = Vocabulary.from_text(text)
    memory = Memory([MemoryIndex.build(memory_tokens(encode_corpus(text, vocab, "text"), len(vocab)))], len(vocab))
    context = memory.start()
    for symbol in [START, *vocab.encode(typed)]:
        context = memory.push(context, symbol)
    return vocab, memory, context


def test_the_memorys_continuations_by_hand_and_in_the_search(tmp_path):
    from nextchar.completion.recall import continuations

    vocab, memory, context = memory_after("the cat sat. the cat ran. the cow sat. ", "so the c")
    space = vocab.encode(" ")[0]
    found = continuations(memory, context, [s == space for s in range(len(vocab))], 10, 5)
    assert [vocab.decode(f) for f in found] == ["at", "ow"]  # commonest first; "the c" matched, not "so "
    # A search too narrow to find them alone keeps the memory's continuations among its hypotheses.
    ckpt = remembering_checkpoint(tmp_path)
    narrow = Completer(ckpt, beam_width=2)
    assert "mes" in [s.completion for s in narrow.suggest("It was the best of ti", 2, "word")]


def test_the_memory_alone_backs_off_to_shorter_suffixes_by_hand():
    from nextchar.completion.recall import recalled

    vocab, memory, context = memory_after("the cat sat. the cat ran. the dog sat. a cat sang. ", "so the cat s")
    space = vocab.encode(" ")[0]

    stops = [symbol in (space, vocab.encode(".")[0]) for symbol in range(len(vocab))]

    # "the cat s" went on once ("at"); "e cat s" is as rare, so the next suffix read is " cat s"
    # (twice: "at", "ang"); "at" is not offered twice.
    assert [vocab.decode(f) for f in recalled(memory, context, stops, 10, 5)] == ["at", "ang"]
    assert [vocab.decode(f) for f in recalled(memory, context, stops, 10, 1)] == ["at"]
    assert [vocab.decode(f) for f in recalled(memory, context, stops, 10, 5, min_depth=8)] == ["at"]


NAMES_INSIDE = "bob jones\nmary jones\nbob jones\nann smith-jonestown\njonas jones\nalice\n"


def lines_memory_checkpoint(tmp_path):
    vocab = Vocabulary.from_text(NAMES_INSIDE + "z")
    torch.manual_seed(0)
    save_checkpoint(tmp_path, build_model(model_config("lstm", vocab_size=len(vocab))), vocab, "lines")
    remember(tmp_path, NAMES_INSIDE * 2)
    return load_checkpoint(tmp_path)


def test_infix_matches_find_a_fragment_at_any_word_start_inside_an_entry_by_hand(tmp_path):
    completer = Completer(lines_memory_checkpoint(tmp_path))
    found = [(m.text, m.at, m.count) for m in completer.infix("jone", 5)]
    # Counted by hand over the text held twice: " jone" after a space or a hyphen, never at a
    # line's start ("jonas" is a prefix: the search completes it, infix does not list it).
    assert found == [("bob jones", 4, 4), ("ann smith-jonestown", 10, 2), ("jonas jones", 6, 2), ("mary jones", 5, 2)]
    assert all(m.text[m.at :].startswith("jone") for m in completer.infix("jone", 5))
    assert [m.text for m in completer.infix("jone", 1)] == ["bob jones"]  # k bounds them
    assert completer.infix("smi", 5)[0].text == "ann smith-jonestown"
    # Nothing typed, a character the text never had, a fragment starting at a boundary: none.
    assert completer.infix("", 5) == completer.infix("z", 5) == completer.infix(" jo", 5) == []
    assert Completer(completer.ckpt, memory=False).infix("jone", 5) == []  # no memory: none


def test_infix_over_a_persons_memory_and_the_service(tmp_path):
    from fastapi.testclient import TestClient

    from nextchar.completion.personal import PersonalCompleters
    from nextchar.service.app import create_app
    from nextchar.service.settings import ServiceSettings

    ckpt = lines_memory_checkpoint(tmp_path)
    people = PersonalCompleters(Completer(ckpt), max_users=2)
    alice = people.get("alice")
    assert [m.text for m in alice.completer.infix("smi", 5)] == ["ann smith-jonestown"]
    alice.learn("mary smith\n")  # what alice taught is found inside too, after she taught it
    assert "mary smith" in [m.text for m in alice.completer.infix("smi", 5)]
    assert "mary smith" not in [m.text for m in people.get("bob").completer.infix("smi", 5)]
    with TestClient(create_app(ckpt=ckpt, settings=ServiceSettings(cache_mb=4))) as client:
        body = client.get("/api/complete", params={"q": "jone", "infix": "true"}).json()
        assert body["infix"][0] == {"text": "bob jones", "at": 4, "count": 4}
        assert "infix" not in client.get("/api/complete", params={"q": "jone"}).json()  # only when asked
