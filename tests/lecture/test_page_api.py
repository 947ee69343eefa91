"""Every JSON the lecture page (/lecture) uses, from `nextchar serve`'s app (the bundled LSTM and a
`--kind rnn` checkpoint) and from `nextchar lecture serve`'s: shapes, and values equal to the
library's own computation done here another way (the models' full forward passes, the NumPy
engine, backward)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from nextchar.checkpoint import load_checkpoint
from nextchar.lecture import backward, forward, make_batch
from nextchar.lecture.bptt import LectureModels
from nextchar.lecture.convert import from_checkpoint
from nextchar.lecture.sgd import SGDConfig, run_states
from nextchar.service import app as service_app
from nextchar.service.app import create_app
from nextchar.service.lecture import PAGE_HEADERS, NumpySource, create_lecture_app
from nextchar.service.settings import ServiceSettings
from nextchar.text import START
from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config

TEXT = 'what "happens"'
SMALL = LectureModels(hidden=16, config=SGDConfig(steps=60, check_every=20))  # the lecture's RNN, quickly


@pytest.fixture(scope="module")
def rnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rnn-model")
    train(NAMES, "mia\nemma\n", out, train_config(steps=20), model_config("rnn"), "lines", progress=False)
    return out


@pytest.fixture(scope="module")
def bundled() -> Iterator[TestClient]:
    with TestClient(create_app(settings=ServiceSettings(cache_mb=8))) as client:
        yield client


@pytest.fixture(scope="module")
def served_rnn(rnn_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ckpt=load_checkpoint(rnn_dir), settings=ServiceSettings(cache_mb=4))) as client:
        yield client


def get(client: TestClient, path: str, **params: object) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_and_its_files(bundled: TestClient) -> None:
    page = bundled.get("/lecture")
    assert page.status_code == 200 and 'id="lecture-text"' in page.text
    assert all(page.headers[k] == v for k, v in PAGE_HEADERS.items())
    assert PAGE_HEADERS == service_app.PAGE_HEADERS
    for name in ("lecture.js", "lecture.css"):
        assert bundled.get(f"/static/{name}").status_code == 200
    info = get(bundled, "/api/lecture/info")
    assert info | {"bptt": ""} == {
        "model": "bundled",
        "kind": "lstm",
        "m": 512,
        "v": info["v"],
        "bptt": "",
        "max_text": 200,
        "max_context": 6,
        "service": True,
    }
    assert "three lines" in info["bptt"]


def test_machine(bundled: TestClient) -> None:
    view = get(bundled, "/api/lecture/machine", text="what happens", m=3)
    assert [(r["t"], r["x"], r["s"]) for r in view["rows"][:4]] == [
        (0, None, "^^^"),
        (1, "^", "^^^"),
        (2, "w", "^^w"),
        (3, "h", "^wh"),
    ]
    assert view["rows"][-1] == {"t": 13, "x": "s", "s": "ens", "output": "ens"}
    assert view["m"] == 30 and view["states_equal_table"] and len(view["hot"]) == 14


def test_state_and_distribution_of_the_bundled_lstm(bundled: TestClient) -> None:
    state = get(bundled, "/api/lecture/state", text=TEXT)
    dist = get(bundled, "/api/lecture/distribution", text=TEXT, k=4)
    ckpt = load_checkpoint(None)
    model = ckpt.model.eval()
    idx = torch.tensor([[START, *ckpt.vocab.encode(TEXT)]])
    with torch.inference_mode():  # the whole text in one call, unlike the route's step by step
        h, _ = model.rnn(model.embedding(idx))
        p = torch.softmax(model(idx)[0][0].double(), -1).numpy()
    assert np.array(state["states"]).shape == (len(TEXT) + 1, 512)
    assert np.allclose(state["states"], h[0].numpy(), atol=2e-5)
    assert state["inputs"] == ["^", *TEXT]
    quotes = next(f for f in state["features"] if f["name"] == "inside quotes")
    assert len(quotes["units"]) == 5
    rows = dist["rows"]
    assert len(rows) == len(TEXT) and [r["y"] for r in rows] == list(TEXT)
    targets = ckpt.vocab.encode(TEXT)
    for t, row in enumerate(rows):
        assert row["p"] == pytest.approx(p[t, targets[t]], rel=1e-4)
        assert row["bits"] == pytest.approx(-math.log2(p[t, targets[t]]), rel=1e-4)
    assert dist["L_seq_bits"] == pytest.approx(sum(r["bits"] for r in rows))
    assert dist["BPC"] == pytest.approx(dist["L_seq_bits"] / len(TEXT))
    assert len(dist["next"]) == 4 and dist["next"][0][1] == pytest.approx(p[-1].max(), rel=1e-4)


def test_bptt_on_the_lecture_rnn(bundled: TestClient) -> None:
    view = get(bundled, "/api/lecture/bptt", text="What happens?", f1="relu", scale=1.5)
    assert view["text"] == "what happens" and view["n"] == 12 and view["f1"] == "relu" and view["m"] == 64
    assert view["autograd_error"] < 1e-9 and set(view["autograd_errors"]) == {
        "J",
        "W_sx",
        "W_ss",
        "W0_ss",
        "W_o",
        "W0_o",
    }
    assert view["accumulated_error"] < 1e-12 and view["fd_error"] < 1e-5
    assert len(view["dL_ds_norms"]) == 13 and len(view["accumulated_norms"]) == 12
    assert np.array(view["dJ_dW_ss"]).shape == (64, 64)
    partial = get(bundled, "/api/lecture/bptt", text="what happens", upto=12)
    assert partial["upto"] == 12 and partial["accumulated_norms"][-1] == pytest.approx(
        float(np.linalg.norm(partial["dJ_dW_ss"]))
    )


def test_a_served_rnn_checkpoint_runs_in_every_view(served_rnn: TestClient, rnn_dir: Path) -> None:
    text = "emma"
    got = from_checkpoint(rnn_dir)
    indices = [START, *got.vocab.encode(text)]
    states, probs = run_states(got.params, got.f1, indices)  # the NumPy engine on the same weights
    state = get(served_rnn, "/api/lecture/state", text=text)
    assert np.allclose(state["states"], states[1:], atol=1e-5)
    dist = get(served_rnn, "/api/lecture/distribution", text=text)
    assert [r["p"] for r in dist["rows"]] == pytest.approx([probs[t, indices[t + 1]] for t in range(4)], rel=1e-5)
    view = get(served_rnn, "/api/lecture/bptt", text=text)
    assert "served rnn checkpoint" in view["source"] and view["m"] == 24
    batch = make_batch([indices[:-1]], [indices[1:]], got.params.ell, got.params.v)
    fwd = forward(got.params, batch, got.f1)
    norms = np.linalg.norm(backward(got.params, batch, fwd).dJ_ds[0], axis=1)
    assert np.allclose(view["dL_ds_norms"], norms, rtol=1e-5)
    assert view["autograd_error"] < 1e-9
    assert "served rnn" in get(served_rnn, "/api/lecture/info")["bptt"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/lecture/state", {"text": "x" * 201}, 422),
        ("/api/lecture/machine", {"text": "a", "m": 7}, 422),
        ("/api/lecture/distribution", {"text": "a", "k": 0}, 422),
        ("/api/lecture/bptt", {"text": "a", "f1": "sigmoid"}, 422),
        ("/api/lecture/bptt", {"text": "a", "scale": 100}, 422),
        ("/api/lecture/bptt", {"text": ""}, 400),
        ("/api/lecture/bptt", {"text": "abc", "upto": 4}, 400),
    ],
)
def test_bad_input_is_a_json_error(bundled: TestClient, path: str, params: dict, status: int) -> None:
    response = bundled.get(path, params=params)
    assert response.status_code == status and "detail" in response.json()


def test_the_lecture_serve_app_runs_the_numpy_engine() -> None:
    model = SMALL.get("tanh")
    with TestClient(create_lecture_app(NumpySource(model, "the lecture's RNN", lecture_models=SMALL))) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/lecture"
        assert client.get("/lecture").status_code == 200
        info = get(client, "/api/lecture/info")
        assert info["service"] is False and info["m"] == 16 and info["kind"] == "rnn (NumPy engine)"
        state = get(client, "/api/lecture/state", text="what")
        states, _ = run_states(model.params, "tanh", [START, *model.vocab.encode("what")])
        assert np.allclose(state["states"], states[1:], atol=1e-5)
        view = get(client, "/api/lecture/bptt", text="what", f1="tanh")
        assert view["m"] == 16 and view["autograd_error"] < 1e-9
        assert get(client, "/api/lecture/bptt", text="what", f1="relu")["trained_f1"] == "tanh"
