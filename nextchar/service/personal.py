"""The service's personal routes: suggestions from one person's adapted weights (nextchar.completion.personal).

Off unless `ServiceSettings.personal_users` > 0: then the service keeps, per `user` key, that
person's own output layer (an LRU of at most `personal_users` people) and adds

    GET  /api/personal/complete?user=&q=…   as /api/complete, with that person's weights
    POST /api/personal/learn?user=          {"text": …}: one adaptation pass on what they typed or
                                            accepted (call it after the suggestions are shown)
    POST /api/personal/reset?user=          forget that person

Keys are whatever the caller uses to tell people apart (an account id, a session cookie);
nothing is shared between keys. State lives in the process: with several worker processes,
route each user to the same one (or run one worker).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time, and
# their parameter types are local to add_personal_routes (as in nextchar.service.app).
import math
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from nextchar.completion.completer import K_MAX
from nextchar.completion.personal import MAX_LEARN_CHARS, PersonalCompleters
from nextchar.errors import UserError

MAX_LEARN_BODY = 4 * MAX_LEARN_CHARS  # characters accepted in one learn request (only the tail is learned)


class LearnRequest(BaseModel):
    text: str = Field(max_length=MAX_LEARN_BODY,
                      description="what the person typed or accepted; whole lines end with \\n")


class LearnBody(BaseModel):
    user: str
    chars: int = Field(description="characters learned from")
    steps: int = Field(description="updates applied")
    ms: float = Field(description="time taken, milliseconds")
    rolled_back: bool = Field(description="a divergent update was detected and undone")


class ResetBody(BaseModel):
    user: str
    known: bool = Field(description="whether the service held anything for this user")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else (-sys.float_info.max if x < 0 else sys.float_info.max)


def add_personal_routes(app: FastAPI, engine: Callable[[], Any], settings: Any) -> None:
    """Add the personal routes to `app`: `engine()` is the service's Engine and `settings` its
    ServiceSettings (nextchar.service.app), whose `personal_users` bounds the people kept."""
    from nextchar.service.app import CompleteBody, ErrorBody, Overloaded

    max_users = settings.personal_users

    box: dict[str, Any] = {}

    def people() -> PersonalCompleters:
        eng = engine()
        if box.get("engine") is not eng:  # a new engine (lifespan restart): new people too
            box["engine"], box["people"] = eng, PersonalCompleters(eng.completer, max_users=max_users)
        return box["people"]

    async def on_model_thread(job: Callable[[], Any]) -> Response:
        try:
            return JSONResponse(await engine().run(job))
        except Overloaded:
            return JSONResponse({"detail": "too many requests are queued; retry shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
        except UserError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    errors = {code: {"description": meaning, "content": {"application/json": {"schema": ErrorBody.model_json_schema()}}}
              for code, meaning in ((400, "bad input"), (503, "too many requests are queued; retry shortly"))}
    User = Annotated[str, Query(min_length=1, max_length=200, description="whose weights (any stable key)")]
    Q = Annotated[str, Query(max_length=settings.max_query, description="the text typed so far")]
    K = Annotated[int | None, Query(ge=1, le=K_MAX, description=f"number of suggestions, 1 … {K_MAX}")]

    @app.get("/api/personal/complete", response_model=CompleteBody, responses=errors,
             summary="Completions from this user's own adapted weights")
    async def personal_complete(
        user: User, q: Q, k: K = None,
        mode: Annotated[Literal["word", "line", "phrase"] | None, Query(description="as /api/complete")] = None,
        typos: Annotated[bool, Query(description="as /api/complete")] = False,
        chars: Annotated[int, Query(ge=1, le=K_MAX, description="next characters to list")] = 10,
    ) -> Response:
        k_, mode_ = k or settings.default_k, mode or engine().default_mode

        def job() -> dict:
            completer = people().get(user).completer
            next_chars = completer.next_chars(q, chars)
            suggestions = completer.suggest(q, k=k_, mode=mode_, typos=typos)
            return {"q": q, "mode": mode_, "k": k_, "typos": typos,
                    "suggestions": [{**s.to_json(), "logprob": _finite(s.logprob), "score": _finite(s.score)}
                                    for s in suggestions],
                    "next_chars": [{"char": ch, "probability": p} for ch, p in next_chars]}

        return await on_model_thread(job)

    @app.post("/api/personal/learn", response_model=LearnBody, responses=errors,
              summary="Adapt this user's weights on what they typed or accepted")
    async def personal_learn(user: User, body: LearnRequest) -> Response:
        def job() -> dict:
            report = people().get(user).learn(body.text)
            return {"user": user, "chars": report.chars, "steps": report.steps, "ms": report.seconds * 1e3,
                    "rolled_back": report.rolled_back}

        return await on_model_thread(job)

    @app.post("/api/personal/reset", response_model=ResetBody, responses=errors,
              summary="Forget everything learned for this user")
    async def personal_reset(user: User) -> Response:
        return await on_model_thread(lambda: {"user": user, "known": people().reset(user)})

    app.state.personal = people

