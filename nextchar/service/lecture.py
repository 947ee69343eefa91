"""The lecture you can watch: the page at /lecture and the JSON its four views draw.

    GET /lecture                              the page (static/lecture.html, .js, .css)
    GET /api/lecture/info                     the model the views run, and the bounds
    GET /api/lecture/machine?text=&m=         view 1: the window machine's table and fixed-weight RNN
    GET /api/lecture/state?text=              view 2: s_t of the served model, units × characters
    GET /api/lecture/distribution?text=&k=    view 3: p_t, p_t[y_t], −log2 p_t[y_t], L_seq, BPC
    GET /api/lecture/bptt?text=&f1=&scale=&upto=   view 4: ‖dL_seq/ds_t‖, dJ/dW^ss accumulated, checks

The mathematics is nextchar.lecture's (views.py, bptt.py: their docstrings give the equations);
here a model is run into a `Trace` and the answers are bounded (text ≤ MAX_TEXT characters)
and sent. Two sources of models:

- `EngineSource`, for `nextchar serve`: the served checkpoint, any kind, run on the engine's
  model thread (s_t is the top layer's h_t for LSTM/GRU, the one-hot window for `window`);
  BPTT runs on the checkpoint's own weights when it is an `rnn`, else on the lecture's RNN;
- `NumpySource`, for `nextchar lecture serve` (`create_lecture_app`): a lecture RNN run by
  the NumPy engine. Nothing here imports torch at module level; only the autograd check and
  the served PyTorch model do, when called.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time.
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from nextchar.errors import UserError
from nextchar.lecture.bptt import MAX_BPTT_UNITS, SCALE_RANGE, LectureModels, LectureRNN, bptt_view, problem
from nextchar.lecture.rnn import Batch, FloatArray, Params
from nextchar.lecture.views import (
    MAX_CONTEXT,
    MAX_TEXT,
    Trace,
    distribution_view,
    encode_text,
    machine_view,
    numpy_trace,
    state_view,
    symbol_names,
)
from nextchar.service.fairness import ClientOverloaded, Overloaded
from nextchar.service.schemas import PAGE_HEADERS, STATIC_DIR
from nextchar.text import START, Vocabulary


class LectureSource(Protocol):
    """What the views need of a model: a run over a text, and a lecture RNN for BPTT."""

    def info(self) -> dict[str, Any]: ...

    async def trace(self, text: str, client: str) -> Trace: ...

    def lecture_rnn(self, f1: str) -> LectureRNN: ...


# ------------------------------------------------------------------------------ the served model


def state_vector(model: Any, state: tuple[Any, ...]) -> FloatArray:
    """s_t of a nextchar model's state: h of the top layer (lstm/gru: (1, layers, m)), the state
    (rnn: (1, m)), or the window's c one-hot blocks, oldest first, as the model lays them out."""
    if model.config.kind == "window":
        v = model.config.vocab_size
        window = state[0][0].cpu().numpy()
        s = np.zeros(len(window) * v)
        s[np.arange(len(window)) * v + window] = 1.0
        return s
    h = state[0][0]
    out: FloatArray = (h[-1] if h.dim() == 2 else h).double().cpu().numpy()
    return out


def model_trace(model: Any, vocab: Vocabulary, text: str) -> Trace:
    """A nextchar PyTorch model (any kind) over "^" + text, one step at a time: s_t and p_t at every t."""
    import torch

    prepared, indices, unknown = encode_text(vocab, text)
    states, probs = [], []
    with torch.inference_mode():
        state = model.initial_state(1, model.device)
        for index in [START, *indices]:
            logits, state = model(torch.tensor([[index]], dtype=torch.long, device=model.device), state)
            states.append(state_vector(model, state))
            probs.append(torch.softmax(logits[0, -1].double(), dim=-1).cpu().numpy())
    return Trace(prepared, ["^", *prepared], indices, np.array(states), np.array(probs), symbol_names(vocab), unknown)


def state_size(config: Any) -> int:
    return int(config.context * config.vocab_size if config.kind == "window" else config.hidden_size)


class ModelSource:
    """A nextchar PyTorch model of any kind, run in a worker thread (`nextchar lecture plot -m DIR`).

    BPTT runs on the model's own weights when it is an `rnn` of at most MAX_BPTT_UNITS units
    (convert.from_torch), else on the lecture's RNN.
    """

    def __init__(self, model: Any = None, vocab: Vocabulary | None = None, name: str = "", lecture_models: Any = None):
        self._fixed = (model, vocab, name)
        self.lecture_models: LectureModels = lecture_models or LectureModels()
        self._own: LectureRNN | None = None

    def model(self) -> tuple[Any, Vocabulary, str]:
        """(the PyTorch model, its vocabulary, what to call it)."""
        model, vocab, name = self._fixed
        if model is None or vocab is None:
            raise UserError("no model to run")
        return model, vocab, name

    async def run(self, job: Callable[[], Trace], client: str) -> Trace:
        return await run_in_threadpool(job)

    def info(self) -> dict[str, Any]:
        model, vocab, name = self.model()
        config = model.config
        own = config.kind == "rnn" and config.hidden_size <= MAX_BPTT_UNITS
        return {
            "model": name,
            "kind": config.kind,
            "m": state_size(config),
            "v": len(vocab),
            "bptt": f"the served rnn checkpoint ({name})" if own else self.lecture_models.description,
        }

    async def trace(self, text: str, client: str) -> Trace:
        model, vocab, _ = self.model()
        return await self.run(lambda: model_trace(model, vocab, text), client)

    def lecture_rnn(self, f1: str) -> LectureRNN:
        model, vocab, name = self.model()
        config = model.config
        if config.kind != "rnn" or config.hidden_size > MAX_BPTT_UNITS:
            return self.lecture_models.get(f1)
        if self._own is None:
            from nextchar.lecture.convert import from_torch

            params, trained = from_torch(model)
            described = f"the served rnn checkpoint ({name}, m = {params.m}, trained with f1 = {trained})"
            self._own = LectureRNN(params, trained, vocab, described)
        return self._own


class EngineSource(ModelSource):
    """The model `nextchar serve` serves, run on its engine's model thread (one job per request)."""

    def __init__(self, engine: Callable[[], Any], lecture_models: LectureModels | None = None) -> None:
        super().__init__(lecture_models=lecture_models)
        self.engine = engine  # the app's LazyEngine: built at startup

    def model(self) -> tuple[Any, Vocabulary, str]:
        engine = self.engine()
        return engine.completer.model, engine.completer.vocab, engine.name

    async def run(self, job: Callable[[], Trace], client: str) -> Trace:
        lock = self.engine().completer.lock

        def locked() -> Trace:
            with lock:  # the completer's model, used by one thread at a time
                return job()

        result: Trace = await self.engine().run(locked, client=client)
        return result


# ------------------------------------------------------------------------------ a NumPy model


class NumpySource:
    """A lecture RNN run by the NumPy engine (`nextchar lecture serve`): views 2–4 on the same weights,
    unless it is a window machine (BPTT then runs on the lecture's RNN)."""

    def __init__(
        self,
        model: LectureRNN,
        name: str,
        kind: str = "rnn",
        s0: FloatArray | None = None,
        lecture_models: LectureModels | None = None,
    ) -> None:
        self.model, self.name, self.kind, self.s0 = model, name, kind, s0
        self.lecture_models = lecture_models or LectureModels()

    def info(self) -> dict[str, Any]:
        own = self.kind == "rnn" and self.model.params.m <= MAX_BPTT_UNITS
        return {
            "model": self.name,
            "kind": f"{self.kind} (NumPy engine)",
            "m": self.model.params.m,
            "v": self.model.params.v,
            "bptt": self.model.description if own else self.lecture_models.description,
        }

    async def trace(self, text: str, client: str) -> Trace:
        m = self.model
        return await run_in_threadpool(numpy_trace, m.params, m.f1, m.vocab, text, self.s0)

    def lecture_rnn(self, f1: str) -> LectureRNN:
        if self.kind == "rnn" and self.model.params.m <= MAX_BPTT_UNITS:
            return self.model
        got: LectureRNN = self.lecture_models.get(f1)
        return got


# ------------------------------------------------------------------------------ the routes


def autograd_errors(params: Params, batch: Batch, f1: str) -> dict[str, float] | None:
    """convert.autograd_check (PyTorch autograd on the same weights); None without torch or past overflow."""
    try:
        from nextchar.lecture.convert import autograd_check
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None
    with np.errstate(all="ignore"):
        errors = autograd_check(params, batch, f1)
    return errors if all(math.isfinite(e) for e in errors.values()) else None


def bptt_answer(source: LectureSource, text: str, f1: str, scale: float, upto: int | None) -> dict[str, Any]:
    """View 4 with the autograd check's errors beside it (run in a worker thread: NumPy and torch)."""
    model = source.lecture_rnn(f1)
    body = bptt_view(model, text, f1, scale, upto)
    params, batch, _ = problem(model, text, scale)
    errors = autograd_errors(params, batch, f1) if body["finite"] else None
    body["autograd_errors"] = errors
    body["autograd_error"] = max(errors.values()) if errors else None
    return body


async def answer(compute: Callable[[], Any]) -> Response:
    """The view's JSON, a UserError as a 400, a full model queue as a 503 (this client's share: 429)."""
    try:
        return JSONResponse(await compute())
    except Overloaded as exc:  # only the engine's queue refuses, so its schemas (and torch) are loaded already
        from nextchar.service.schemas import overloaded_response

        return overloaded_response(client=isinstance(exc, ClientOverloaded))
    except UserError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def lecture_router(source: LectureSource, service: bool = True) -> APIRouter:
    """The page and its four views' JSON over `source` (`service`: the page links the main page).

    Outside the OpenAPI schema: the page's own JSON, not an API promised to other programs."""
    router = APIRouter(include_in_schema=False)
    Text = Annotated[str, Query(max_length=MAX_TEXT, description=f"the text typed (at most {MAX_TEXT} characters)")]
    lo, hi = SCALE_RANGE

    @router.get("/lecture")
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "lecture.html", headers=PAGE_HEADERS)

    @router.get("/api/lecture/info", summary="The lecture page: the model its views run, and their bounds")
    async def info() -> Response:
        async def compute() -> dict[str, Any]:
            return {**source.info(), "max_text": MAX_TEXT, "max_context": MAX_CONTEXT, "service": service}

        return await answer(compute)

    @router.get("/api/lecture/machine", summary="View 1: the last-m-characters machine and its fixed-weight RNN")
    async def machine(text: Text = "", m: Annotated[int, Query(ge=1, le=MAX_CONTEXT)] = 3) -> Response:
        return await answer(lambda: run_in_threadpool(machine_view, text, m))

    @router.get("/api/lecture/state", summary="View 2: the state s_t of the model, and units that track features")
    async def state(request: Request, text: Text = "") -> Response:
        async def compute() -> dict[str, Any]:
            return state_view(await source.trace(text, _client(request)))

        return await answer(compute)

    @router.get("/api/lecture/distribution", summary="View 3: p_t at every position, L_seq and BPC")
    async def distribution(request: Request, text: Text = "", k: Annotated[int, Query(ge=1, le=20)] = 5) -> Response:
        async def compute() -> dict[str, Any]:
            return distribution_view(await source.trace(text, _client(request)), k)

        return await answer(compute)

    @router.get("/api/lecture/bptt", summary="View 4: backpropagation through time in the lecture's RNN")
    async def bptt(
        text: Text = "",
        f1: Literal["tanh", "relu"] = "tanh",
        scale: Annotated[float, Query(ge=lo, le=hi, description="the factor α on W^ss")] = 1.0,
        upto: Annotated[int | None, Query(ge=1, le=MAX_TEXT)] = None,
    ) -> Response:
        return await answer(lambda: run_in_threadpool(bptt_answer, source, text, f1, scale, upto))

    return router


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def create_lecture_app(source: LectureSource) -> FastAPI:
    """`nextchar lecture serve`: the lecture page alone (/ redirects to it), over a NumPy source."""
    app = FastAPI(title="nextchar lecture", docs_url=None, redoc_url=None)
    app.include_router(lecture_router(source, service=False))

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/lecture")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
