"""Personalised suggestions (personal.py): own weights per person, isolation, LRU, reset, eval-complete --adapt."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nextchar.adapt import AdaptConfig
from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.completion.completer import Completer
from nextchar.completion.personal import PERSONAL_DEFAULTS, PersonalCompleter, PersonalCompleters, personal_view
from nextchar.errors import UserError
from nextchar.models import ModelConfig, build_model
from nextchar.text import END, START
from tests.helpers import NAMES, Bounded

NEW_NAME = "prospero"  # letters the names model knows, a name it has never seen


def line_logprob(completer: Completer, line: str) -> float:
    """ln p(line + its end | "^") under the completer's model, framed as the completer reads lines."""
    idx = [START, *completer.table.encode(line)]
    end = END if completer.format == "lines" else completer.table.index["\n"]
    with torch.no_grad():
        logits, _ = completer.model(torch.tensor([idx]))
    logp = torch.log_softmax(logits[0], -1)
    targets = [*idx[1:], end]
    return float(sum(logp[t, y] for t, y in enumerate(targets)))


@pytest.fixture
def base(lines_model_dir) -> Completer:
    return Completer(load_checkpoint(lines_model_dir), beam_width=4, max_chars=12)


@pytest.mark.parametrize("kind", ["window", "rnn", "gru", "lstm"])
@pytest.mark.parametrize("params", ["output", "all"])
def test_personal_view_owns_only_its_weights(kind, params):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, vocab_size=12, hidden_size=8, embedding_size=4, context=3)).eval()
    names = [
        n for n, _ in model.named_parameters() if params == "all" or n in ("W_o", "W0_o", "head.weight", "head.bias")
    ]
    view = personal_view(model, names)
    shared = dict(model.named_parameters())
    for name, p in view.named_parameters():
        assert (p is shared[name]) is (name not in names), name
        assert torch.equal(p, shared[name])
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        for name in names:
            dict(view.named_parameters())[name].add_(0.5)
        changed, _ = view(x)
        original, _ = model(x)
    assert not torch.allclose(changed, original)  # the view computes with its own weights …
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), shared.values(), strict=True))  # … not model's


def test_learning_a_new_name_raises_its_probability(base):
    person = PersonalCompleter(base)  # the defaults: the output layer only
    before = line_logprob(person.completer, NEW_NAME)
    assert before == pytest.approx(line_logprob(base, NEW_NAME), abs=1e-5)
    for _ in range(8):
        report = person.learn(NEW_NAME + "\n")
        assert report.chars == len(NEW_NAME) + 1 and report.steps == 1 and not report.rolled_back
    after = line_logprob(person.completer, NEW_NAME)
    assert after > before + 2.0  # e² ≈ 7× more likely
    # The shared model and its completer know nothing of it.
    assert line_logprob(base, NEW_NAME) == pytest.approx(before, abs=1e-5)


def test_a_learned_name_is_suggested(base):
    # The tiny test model's states say little, so it learns with all its weights, quickly.
    person = PersonalCompleter(base, AdaptConfig(rule="sgd", lr=2.0, window=256, decay=0.0, params="all"))
    assert NEW_NAME not in [s.text for s in person.completer.suggest("prosp", k=3)]
    for _ in range(7):
        person.learn(NEW_NAME + "\n")
    assert NEW_NAME in [s.text for s in person.completer.suggest("prosp", k=3)]
    assert NEW_NAME not in [s.text for s in base.suggest("prosp", k=3)]


def test_people_never_share_what_they_learn(base):
    flags = [p.requires_grad for p in base.model.parameters()]
    people = PersonalCompleters(base, max_users=4)
    alice, bob = people.get("alice"), people.get("bob")
    bob_before = bob.completer.next_chars("pro", 5)
    base_before = base.next_chars("pro", 5)
    for _ in range(5):
        alice.learn(NEW_NAME + "\n")
    assert alice.completer.next_chars("pro", 5) != bob_before
    assert bob.completer.next_chars("pro", 5) == bob_before
    assert base.next_chars("pro", 5) == base_before
    assert people.get("alice") is alice  # the same person comes back with what they learned
    # The shared weights are only read: no gradient lands on them, no flag changes.
    assert all(p.grad is None for p in base.model.parameters())
    assert [p.requires_grad for p in base.model.parameters()] == flags


def test_a_typing_session_sees_new_weights_after_learning(base):
    person = PersonalCompleter(base)
    session = person.completer.session()
    session.type("pros")
    stale = session.suggest(5)
    for _ in range(8):
        person.learn(NEW_NAME + "\n")
    fresh = session.suggest(5)
    assert fresh != stale
    assert fresh == person.completer.suggest("pros", 5)  # as a brand-new lookup would say


def test_lru_bound_and_reset(base):
    people = PersonalCompleters(base, max_users=2)
    a = people.get("a")
    a.learn(NEW_NAME + "\n")
    people.get("b")
    people.get("c")  # evicts a, the least recently used
    assert len(people) == 2 and "a" not in people and people.evicted == 1
    again = people.get("a")
    assert again is not a and line_logprob(again.completer, NEW_NAME) == pytest.approx(
        line_logprob(base, NEW_NAME), abs=1e-5
    )
    assert people.reset("a") and not people.reset("a") and "a" not in people
    owned = people.owned_bytes()
    head = sum(p.numel() for n, p in base.model.named_parameters() if n.startswith("head."))
    assert owned == len(people) * 2 * 4 * head  # each person: output layer + its rollback copy, fp32


def test_person_reset_forgets(base):
    person = PersonalCompleter(base)
    start = person.completer.suggest("pro", 3)
    for _ in range(5):
        person.learn(NEW_NAME + "\n")
    assert person.completer.suggest("pro", 3) != start
    person.reset()
    assert person.completer.suggest("pro", 3) == start
    assert person.learned_chars == 0


def test_divergent_learning_is_rolled_back_never_kept(base):
    person = PersonalCompleter(base, AdaptConfig(rule="sgd", lr=1e12, window=4, decay=0.0, params="output"))
    report = person.learn("emma olivia ava\nisabella sophia\n")
    assert report.rolled_back
    assert all(torch.isfinite(p).all() for p in person.model.parameters())
    suggestions = person.completer.suggest("em", 3)
    assert suggestions and all(math.isfinite(s.logprob) for s in suggestions)


@pytest.mark.parametrize("text", ["", "\n", "😀 unknown ∑\n", "no newline yet", "a" * 10_000])
def test_learning_edge_texts(base, text):
    person = PersonalCompleter(base, PERSONAL_DEFAULTS)
    report = person.learn(text)
    assert report.chars >= 0 and not report.rolled_back
    assert person.completer.suggest("e", 2)


def test_text_models_learn_across_lines(text_model_dir):
    base = Completer(load_checkpoint(text_model_dir), beam_width=4, max_chars=12)
    person = PersonalCompleter(base)
    report = person.learn("It was the zoo.\nIt was the zoo.\n")
    assert report.chars == 32 and report.steps == 1  # one stream from "^", newlines included


def test_bad_inputs_are_user_errors(base):
    with pytest.raises(UserError, match="max_users"):
        PersonalCompleters(base, max_users=0)
    people = PersonalCompleters(base)
    for user in ("", "x" * 201, None):
        with pytest.raises(UserError, match="user key"):
            people.get(user)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="must be a string"):
        people.get("a").learn(b"bytes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_eval_complete_adapt_raises_keystroke_savings(capsys, lines_model_dir, write_file):
    # A person who keeps typing names the model has never seen.
    names = [
        "prospero",
        "miranda",
        "caliban",
        "ariel",
        "prospero",
        "ferdinand",
        "miranda",
        "prospero",
        "caliban",
        "ariel",
        "miranda",
        "prospero",
        "ferdinand",
        "ariel",
        "caliban",
        "prospero",
    ] * 2
    doc = write_file("names.txt", "\n".join(names) + "\n")
    # (The tiny test model learns only with all its weights and big steps; see docs for real settings.)
    learn = ["--adapt", "--adapt-params", "all", "--adapt-lr", "2", "--adapt-decay", "0"]
    code = main(
        [
            "eval-complete",
            str(doc),
            "-m",
            str(lines_model_dir),
            *learn,
            "--no-baselines",
            "--json",
            "-k",
            "3",
            "--beam",
            "4",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapted"]["ksr"] > out["ksr"] + 0.04
    learning = out["adapted"]["learning"]
    assert learning["lines"] == len(names) and learning["rollbacks"] == 0 and learning["us_per_char"] > 0
    code = main(["eval-complete", str(doc), "-m", str(lines_model_dir), "--adapt", "--no-baselines", "-k", "3"])
    text = capsys.readouterr().out
    assert code == 0 and "model (lstm), adapted" in text and "learning each line after it is typed" in text


def test_eval_complete_adapt_rms_needs_a_training_text(capsys, lines_model_dir, write_file):
    doc = write_file("names.txt", NAMES)
    code = main(
        ["eval-complete", str(doc), "-m", str(lines_model_dir), "--adapt", "--adapt-rule", "rms", "--no-baselines"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot find the model's training text" in err
    train = write_file("train.txt", NAMES * 3)
    assert (
        main(
            [
                "eval-complete",
                str(doc),
                "-m",
                str(lines_model_dir),
                "--adapt",
                "--adapt-rule",
                "rms",
                "--adapt-lr",
                "1e-3",
                "--adapt-train",
                str(train),
                "--no-baselines",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["adapted"]["learning"]["rollbacks"] == 0


# ------------------------------------------------------------------------------ the service's personal routes


def personal_app(lines_model_dir, **settings):
    from nextchar.service.app import create_app
    from nextchar.service.settings import ServiceSettings

    people = settings.get("personal_users", 2)
    cache_mb = 4 + 3 * people  # what each person may hold (person_bytes: ~2.1 MB here) and the shared caches
    chosen = {"cache_mb": cache_mb, "personal_users": 2, "max_chars": 12, "beam_width": 4, "precision": "fp32"}
    chosen.update(settings)
    return create_app(ckpt=load_checkpoint(lines_model_dir), settings=ServiceSettings(**chosen))


@pytest.fixture(scope="module")
def personal_client(lines_model_dir):
    from fastapi.testclient import TestClient

    # personal weights are fp32: compare like with like; the Host is one the service answers
    with TestClient(personal_app(lines_model_dir, personal_users=64), base_url="http://127.0.0.1") as client:
        yield client


def new_person(client) -> dict[str, str]:
    """A new person's Authorization header (POST /api/personal/people)."""
    response = client.post("/api/personal/people")
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["user"]) == 16 and len(body["token"]) >= 40
    return {"Authorization": f"Bearer {body['token']}"}


def personal_texts(client, who: dict[str, str], q: str = "prosp") -> list[str]:
    response = client.get("/api/personal/complete", params={"q": q, "k": 3}, headers=who)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["q"] == q and len(body["suggestions"]) <= 3 and body["next_chars"]
    return [s["text"] for s in body["suggestions"]]


def test_service_personal_routes_learn_isolate_and_reset(personal_client, lines_model_dir):
    from fastapi.testclient import TestClient

    from nextchar.service.app import create_app
    from nextchar.service.settings import ServiceSettings

    client = personal_client
    alice, bob = new_person(client), new_person(client)
    shared_before = client.get("/api/complete", params={"q": "prosp", "k": 3}).json()["suggestions"]
    start = personal_texts(client, alice)
    assert start == personal_texts(client, bob) == [s["text"] for s in shared_before]
    for i in range(6):
        response = client.post("/api/personal/learn", headers=alice, json={"text": NEW_NAME + "\n"})
        assert response.status_code == 200
        body = response.json()
        assert body["chars"] == len(NEW_NAME) + 1 and body["steps"] == 1
        assert body["learned"] == (i + 1) * (len(NEW_NAME) + 1)  # all alice taught: what a client checks
        assert not body["rolled_back"] and body["ms"] >= 0
    assert personal_texts(client, alice) != start  # alice's own weights have moved …
    assert personal_texts(client, bob) == start  # … bob's have not …
    shared_after = client.get("/api/complete", params={"q": "prosp", "k": 3}).json()["suggestions"]
    assert shared_after == shared_before  # … nor the shared model's
    reset = client.post("/api/personal/reset", headers=alice, json={})
    assert reset.status_code == 200 and reset.json()["known"] is True
    assert personal_texts(client, alice) == start
    again = client.post("/api/personal/learn", headers=alice, json={"text": NEW_NAME + "\n"}).json()
    assert again["learned"] == len(NEW_NAME) + 1  # the reset forgot what was taught
    assert client.post("/api/personal/reset", headers=new_person(client), json={}).json()["known"] is False
    # Off by default: the service then keeps no per-user state and has no such routes.
    with TestClient(create_app(ckpt=load_checkpoint(lines_model_dir), settings=ServiceSettings(cache_mb=2))) as plain:
        assert plain.get("/api/personal/complete", params={"q": "x"}).status_code == 404


def test_nobody_reads_changes_resets_or_evicts_another_person_without_their_token(lines_model_dir):
    """The attacks of an anonymous client: no token, a guessed one, a body-less reset, a foreign
    Host (DNS rebinding), and creating people until the others are pushed out."""
    from fastapi.testclient import TestClient

    with TestClient(personal_app(lines_model_dir, personal_users=2), base_url="http://127.0.0.1") as client:
        alice = new_person(client)
        client.post("/api/personal/learn", headers=alice, json={"text": NEW_NAME + "\n"})
        taught = personal_texts(client, alice)
        for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "Basic YWxpY2U6eA=="}):
            for method, route, extra in (
                ("get", "/api/personal/complete", {"params": {"q": "prosp"}}),
                ("post", "/api/personal/learn", {"json": {"text": "poison\n"}}),
                ("post", "/api/personal/reset", {"json": {}}),
            ):
                response = getattr(client, method)(route, headers=headers, **extra)
                assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert client.post("/api/personal/reset", headers=alice).status_code == 422  # no JSON body: no reset
        assert client.get("/api/personal/reset", headers=alice).status_code == 405
        assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
        new_person(client)  # the second place
        for _ in range(3):  # every place is held by someone active: refused, nobody pushed out
            refused = client.post("/api/personal/people")
            assert refused.status_code == 429 and "retry-after" in refused.headers
        assert personal_texts(client, alice) == taught  # alice, untouched by all of it


def test_creating_people_is_rate_limited_and_may_need_the_issuer_secret(lines_model_dir):
    from fastapi.testclient import TestClient

    from nextchar.service.identity import CREATE_BURST, digest

    with TestClient(personal_app(lines_model_dir, personal_users=1000), base_url="http://127.0.0.1") as client:
        codes = [client.post("/api/personal/people").status_code for _ in range(CREATE_BURST + 5)]
        assert codes[:CREATE_BURST] == [201] * CREATE_BURST and 429 in codes[CREATE_BURST:]
    secret = "s" * 24
    app = personal_app(lines_model_dir, personal_issuer_sha256=digest(secret))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.post("/api/personal/people").status_code == 401
        assert client.post("/api/personal/people", headers={"Authorization": "Bearer nope"}).status_code == 401
        made = client.post("/api/personal/people", headers={"Authorization": f"Bearer {secret}"})
        assert made.status_code == 201


@pytest.mark.parametrize(
    ("method", "route", "params", "body", "status"),
    [
        ("get", "/api/personal/complete", {}, None, 422),  # no q
        ("get", "/api/personal/complete", {"q": "a", "k": 0}, None, 422),
        ("post", "/api/personal/learn", {}, {"txt": "x"}, 422),
        ("post", "/api/personal/learn", {}, {"text": 3}, 422),
        ("post", "/api/personal/learn", {}, {"text": "x" * 20_000}, 422),
        ("post", "/api/personal/reset", {}, {"all": True}, 422),
    ],
)
def test_service_personal_bad_input_is_a_4xx(personal_client, method, route, params, body, status):
    who = new_person(personal_client)
    extra = {"json": body} if body is not None else {}
    response = getattr(personal_client, method)(route, params=params, headers=who, **extra)
    assert response.status_code == status
    assert "detail" in response.json()


def test_service_personal_learns_any_text(personal_client):
    edge = new_person(personal_client)
    for text in ("", "\n\n", "😀 ∑ unknown\n", "a" * 16_000):
        response = personal_client.post("/api/personal/learn", headers=edge, json={"text": text})
        assert response.status_code == 200 and not response.json()["rolled_back"]
    assert personal_texts(personal_client, edge, "e")


@pytest.fixture(scope="module")
def personal_schema(lines_model_dir):
    schemathesis = pytest.importorskip("schemathesis")
    from nextchar.service.app import create_app
    from nextchar.service.settings import ServiceSettings

    settings = ServiceSettings(cache_mb=16, personal_users=3, max_chars=8, beam_width=2, allowed_hosts=["testserver"])
    app = create_app(ckpt=load_checkpoint(lines_model_dir), settings=settings)
    _, token, _ = app.state.personal.identities.create()  # the fuzzed calls come from a known person
    return schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/api/personal/"), token


@pytest.mark.slow
def test_service_personal_routes_fuzzed(personal_schema):
    """Whatever the generated input, valid or not: no 5xx, and every answer matches the schema
    (200 examples per operation; the example database replays a failure found once)."""
    from hypothesis import HealthCheck, given, settings

    schema, token = personal_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.path for op in operations) == [
        "/api/personal/complete",
        "/api/personal/learn",
        "/api/personal/people",
        "/api/personal/reset",
    ]
    bound = Bounded(seconds=10, mb=300)
    for operation in operations:
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:  # type: ignore[no-untyped-def]
            with bound.example():
                case.call_and_validate(headers={"Authorization": f"Bearer {token}"})

        check()
    bound.check()


def test_learn_bodies_are_bounded_before_they_are_read_and_lone_surrogates_are_a_422(personal_client):
    """Before: a lone surrogate's 422 echoed it and failed to encode (a 500); a body was read whole."""
    learn = {"url": "/api/personal/learn", "headers": new_person(personal_client)}
    json_type = {"content-type": "application/json", **learn.pop("headers")}
    learn["headers"] = json_type
    r = personal_client.post(**learn, content=b'{"text": "ab\\ud800c"}')
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "string_unicode"
    big = b'{"text": "' + b"a" * 300_000 + b'"}'  # past the 256 KiB default, said by its Content-Length
    r = personal_client.post(**learn, content=big)
    assert r.status_code == 413 and "longer than 262144 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: refused once the bytes read pass the limit
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 10_000
        yield b'"}'

    r = personal_client.post(**learn, content=chunks())
    assert r.status_code == 413
    ok = personal_client.post(**learn, json={"text": "mia\n"})
    assert ok.status_code == 200 and ok.json()["chars"] == 4
