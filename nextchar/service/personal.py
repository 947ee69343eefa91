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
# their parameter types are local to personal_router (as in nextchar.service.app).
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from nextchar.completion.config import K_MAX, Mode
from nextchar.completion.personal import MAX_LEARN_CHARS, PersonalCompleters
from nextchar.errors import UserError
from nextchar.service.engine import Engine, Overloaded
from nextchar.service.schemas import OVERLOADED, CompleteBody, complete_json, error_responses, overloaded_response
from nextchar.service.settings import ServiceSettings

MAX_LEARN_BODY = 4 * MAX_LEARN_CHARS  # characters accepted in one learn request (only the tail is learned)
MEANINGS = {400: "bad input", 503: OVERLOADED}


class LearnRequest(BaseModel):
    text: str = Field(
        max_length=MAX_LEARN_BODY, description="what the person typed or accepted; whole lines end with \\n"
    )


class LearnBody(BaseModel):
    user: str
    chars: int = Field(description="characters learned from")
    steps: int = Field(description="updates applied")
    ms: float = Field(description="time taken, milliseconds")
    rolled_back: bool = Field(description="a divergent update was detected and undone")


class ResetBody(BaseModel):
    user: str
    known: bool = Field(description="whether the service held anything for this user")


class People:
    """The people the service adapts to: calling it gives the PersonalCompleters of the engine now
    (a new engine, after a lifespan restart, starts with nobody)."""

    def __init__(self, engine: Callable[[], Engine], max_users: int):
        self._engine = engine
        self.max_users = max_users
        self._for: tuple[Engine, PersonalCompleters] | None = None

    def __call__(self) -> PersonalCompleters:
        engine = self._engine()
        if self._for is None or self._for[0] is not engine:
            self._for = engine, PersonalCompleters(engine.completer, max_users=self.max_users)
        return self._for[1]


def personal_router(people: People, engine: Callable[[], Engine], settings: ServiceSettings) -> APIRouter:
    """The personal routes over `people`, run on the model thread of `engine()`; `settings` gives
    the query limits and defaults of the service's other routes."""
    router = APIRouter()

    async def on_model_thread(job: Callable[[], dict[str, Any]]) -> Response:
        try:
            return JSONResponse(await engine().run(job))
        except Overloaded:
            return overloaded_response()
        except UserError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    errors = error_responses(400, 503, meanings=MEANINGS)
    User = Annotated[str, Query(min_length=1, max_length=200, description="whose weights (any stable key)")]
    Q = Annotated[str, Query(max_length=settings.max_query, description="the text typed so far")]
    K = Annotated[int | None, Query(ge=1, le=K_MAX, description=f"number of suggestions, 1 … {K_MAX}")]

    @router.get(
        "/api/personal/complete",
        response_model=CompleteBody,
        responses=errors,
        summary="Completions from this user's own adapted weights",
    )
    async def personal_complete(
        user: User,
        q: Q,
        k: K = None,
        mode: Annotated[Mode | None, Query(description="as /api/complete")] = None,
        typos: Annotated[bool, Query(description="as /api/complete")] = False,
        chars: Annotated[int, Query(ge=1, le=K_MAX, description="next characters to list")] = 10,
    ) -> Response:
        k_, mode_ = k or settings.default_k, mode or engine().default_mode

        def job() -> dict[str, Any]:
            completer = people().get(user).completer
            next_chars = completer.next_chars(q, chars)
            suggestions = completer.suggest(q, k=k_, mode=mode_, typos=typos)
            return complete_json(q, mode_, k_, typos, suggestions, next_chars)

        return await on_model_thread(job)

    @router.post(
        "/api/personal/learn",
        response_model=LearnBody,
        responses=errors,
        summary="Adapt this user's weights on what they typed or accepted",
    )
    async def personal_learn(user: User, body: LearnRequest) -> Response:
        def job() -> dict[str, Any]:
            report = people().get(user).learn(body.text)
            return {
                "user": user,
                "chars": report.chars,
                "steps": report.steps,
                "ms": report.seconds * 1e3,
                "rolled_back": report.rolled_back,
            }

        return await on_model_thread(job)

    @router.post(
        "/api/personal/reset",
        response_model=ResetBody,
        responses=errors,
        summary="Forget everything learned for this user",
    )
    async def personal_reset(user: User) -> Response:
        return await on_model_thread(lambda: {"user": user, "known": people().reset(user)})

    return router
