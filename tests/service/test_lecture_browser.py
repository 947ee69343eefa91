"""The lecture page (/lecture) in a real browser: Playwright driving Debian's headless Chromium
against a real server, with the bundled LSTM and with a `--kind rnn` checkpoint. It types "what
happens" and checks that each of the four views moved and shows the library's numbers, computed
here another way. Screenshots go to test-artifacts/lecture-*.png (docs/lecture.md shows them).

Skipped without chromium, like tests/service/test_browser.py (whose launch settings it shares).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nextchar.checkpoint import load_checkpoint
from nextchar.lecture.bptt import LectureModels, LectureRNN, bptt_view
from nextchar.lecture.convert import from_checkpoint
from nextchar.lecture.sgd import run_states
from nextchar.lecture.statemachine import window_machine
from nextchar.service.app import create_app
from nextchar.service.settings import ServiceSettings
from nextchar.text import START
from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config
from tests.live_server import live_server
from tests.service.test_browser import ARTIFACTS, pytestmark, sync_api  # noqa: F401

TEXT = "what happens"
DOCS = Path(__file__).parents[2] / "docs"
expect = sync_api.expect


@pytest.fixture(scope="module", params=["bundled", "rnn"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """(base URL, checkpoint) of a live server of the bundled model or of a tiny `rnn` checkpoint."""
    if request.param == "bundled":
        ckpt = load_checkpoint(None)
    else:
        out = tmp_path_factory.mktemp("rnn-page")
        train(
            NAMES + "what happens\n", "mia\n", out, train_config(steps=20), model_config("rnn"), "lines", progress=False
        )
        ckpt = load_checkpoint(out)
    with live_server(create_app(ckpt=ckpt, settings=ServiceSettings(cache_mb=8))) as url:
        yield url, ckpt


def expected_states(ckpt: object, text: str) -> tuple[np.ndarray, np.ndarray]:
    """s_1 … s_{n+1} and p_1 … p_{n+1} computed another way: the LSTM's whole sequence in one call,
    or the `rnn` checkpoint's weights in the NumPy engine."""
    model, vocab = ckpt.model.eval(), ckpt.vocab  # type: ignore[attr-defined]
    idx = [START, *vocab.encode(text)]
    if model.config.kind == "rnn":
        got = from_checkpoint(ckpt.path)  # type: ignore[attr-defined]
        states, probs = run_states(got.params, got.f1, idx)
        return states[1:], probs
    with torch.inference_mode():
        h, _ = model.rnn(model.embedding(torch.tensor([idx])))
        p = torch.softmax(model(torch.tensor([idx]))[0][0].double(), -1)
    return h[0].double().numpy(), p.numpy()


def lecture_rnn(ckpt: object, f1: str) -> LectureRNN:
    """The weights the BPTT view uses: the checkpoint's own (rnn), else the lecture's RNN (the same
    deterministic SGD run as the server's)."""
    if ckpt.model.config.kind == "rnn":  # type: ignore[attr-defined]
        got = from_checkpoint(ckpt.path)  # type: ignore[attr-defined]
        return LectureRNN(got.params, got.f1, got.vocab, "")
    return LectureModels().get(f1)


def numbers(page: object, selector: str, attribute: str) -> list[float]:
    return [float(v) for v in page.locator(selector).evaluate_all(f"els => els.map(e => e.dataset.{attribute})")]  # type: ignore[attr-defined]


def test_typing_moves_all_four_views(browser: object, served: tuple[str, object]) -> None:
    url, ckpt = served
    kind = ckpt.model.config.kind  # type: ignore[attr-defined]
    context = browser.new_context(viewport={"width": 1100, "height": 900})  # type: ignore[attr-defined]
    problems: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("request", lambda req: None if req.url.startswith(url) else problems.append(req.url))
        page.goto(url + "/lecture")
        expect(page.locator("#model-info")).to_contain_text(kind)
        box = page.locator("#lecture-text")
        box.click()
        box.press_sequentially(TEXT, delay=30)

        # 1. The state machine: the table's rows are the lecture's, and its RNN agrees.
        rows = page.locator("#machine-table tbody tr")
        expect(rows).to_have_count(len(TEXT) + 2)
        table = window_machine(3).transduce("^" + TEXT)
        assert rows.evaluate_all("trs => trs.map(tr => tr.dataset.s)") == [r.s for r in table]
        assert rows.nth(6).inner_text().split() == ["6", "_", "at_", "at_"]
        expect(page.locator("#machine-summary")).to_contain_text("at every step: yes")
        expect(page.locator("#w-ss td.I")).to_have_count(2)

        # 2. The state: a heatmap cell under the pointer, and the text coloured by one unit.
        states, probs = expected_states(ckpt, TEXT)
        m = states.shape[1]
        rows_per_unit = 1 if m > 256 else 2 if m > 64 else 5
        expect(page.locator("#unit-text span")).to_have_count(len(TEXT))
        t, unit = 5, min(7, m - 1)  # the state after reading x_6 = " "
        page.locator("#state-heatmap").hover(position={"x": t * 12 + 6, "y": unit * rows_per_unit + 0.5})
        readout = page.locator("#state-readout")
        expect(readout).to_have_attribute("data-unit", str(unit))
        assert float(readout.get_attribute("data-value")) == pytest.approx(states[t, unit], abs=2e-4)
        page.locator("#unit").fill(str(unit))
        assert numbers(page, "#unit-text span", "value") == pytest.approx(states[1:, unit], abs=2e-4)
        expect(page.locator("#features li")).to_have_count(4)

        # 3. p_t: a bar under every character, the probabilities and the bits the model gives.
        expect(page.locator("#dist-strip .pos")).to_have_count(len(TEXT))
        targets = ckpt.vocab.encode(TEXT)  # type: ignore[attr-defined]
        expected_p = [probs[i, targets[i]] for i in range(len(TEXT))]
        assert numbers(page, "#dist-strip .pos", "p") == pytest.approx(expected_p, rel=1e-4)
        bits = float(page.locator("#lseq").get_attribute("data-bits"))
        assert bits == pytest.approx(-np.log2(expected_p).sum(), rel=1e-4)

        # 4. BPTT: the gradient norms are backward's; switching f1 and scaling W^ss moves them.
        model = lecture_rnn(ckpt, "tanh")
        expect(page.locator("#bptt-norms li")).to_have_count(len(TEXT) + 1)
        view = bptt_view(model, TEXT, "tanh")
        expect(page.locator("#check-autograd")).to_contain_text("e-")
        assert numbers(page, "#bptt-norms li", "norm") == pytest.approx(view["dL_ds_norms"], rel=1e-9)
        assert float(page.locator("#check-autograd").get_attribute("data-value")) < 1e-9
        ARTIFACTS.mkdir(exist_ok=True)
        if kind == "lstm":
            for name in ("machine", "state", "dist", "bptt"):
                page.locator(f"#{name}-view").screenshot(path=str(ARTIFACTS / f"lecture-{name}.png"))
        page.locator("#f1").select_option("relu")
        page.locator("#scale").fill("2")
        relu = bptt_view(lecture_rnn(ckpt, "relu"), TEXT, "relu", 2.0)
        page.wait_for_function(
            "v => Math.abs(Number(document.querySelector('#bptt-norms li').dataset.norm) - v) <= 1e-9 * v",
            arg=relu["dL_ds_norms"][0],
        )
        assert numbers(page, "#bptt-norms li", "norm") == pytest.approx(relu["dL_ds_norms"], rel=1e-9)
        if kind == "lstm":
            page.locator("#bptt-view").screenshot(path=str(ARTIFACTS / "lecture-bptt-relu.png"))
        assert problems == []
    finally:
        context.close()


def test_docs_show_the_screenshots() -> None:
    """docs/lecture.md shows the page as this test saw it (copy test-artifacts/lecture-*.png to docs/)."""
    text = (DOCS / "lecture.md").read_text(encoding="utf-8")
    for name in ("machine", "state", "dist", "bptt", "bptt-relu"):
        assert f"](lecture-{name}.png)" in text
        assert (DOCS / f"lecture-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
