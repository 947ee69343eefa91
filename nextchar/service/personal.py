"""The service's personal routes: suggestions from one person's adapted weights (nextchar.completion.personal).

Off unless `ServiceSettings.personal_users` > 0: then the service keeps, per person, their own
output layer and memory (at most `personal_users` people) and adds

    POST /api/personal/people                    {"user", "token"}: a new person (201); the
                                                 token is shown once and proves who calls
    GET  /api/personal/complete?q=…              as /api/complete, with that person's weights
    POST /api/personal/learn   {"text": …}       one adaptation pass on what they typed or
                                                 accepted (call it after the suggestions are shown)
    POST /api/personal/reset   {}                forget what they taught

Every call but the first carries `Authorization: Bearer <token>`: nextchar.service.identity
says why, and how creating people is bounded. State lives in the process: with several worker
processes, route each person to the same one (or run one worker).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time, and
# their parameter types are local to personal_router (as in nextchar.service.app).
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from nextchar.completion.config import K_MAX, Mode
from nextchar.completion.personal import MAX_LEARN_CHARS, PersonalCompleters
from nextchar.errors import UserError
from nextchar.service.engine import Engine
from nextchar.service.fairness import ClientOverloaded, Overloaded
from nextchar.service.identity import Identities, Refused
from nextchar.service.schemas import OVERLOADED, CompleteBody, complete_json, error_responses, overloaded_response
from nextchar.service.settings import ServiceSettings

MAX_LEARN_BODY = 4 * MAX_LEARN_CHARS  # characters accepted in one learn request (only the tail is learned)
MEANINGS = {
    400: "bad input",
    401: "no token, or not one this service issued (POST /api/personal/people gives one)",
    429: "people are being created too fast, or every place is held by someone active; or this person "
    "has their share of the model queue waiting already",
    503: OVERLOADED,
}


class LearnRequest(BaseModel):
    text: str = Field(
        max_length=MAX_LEARN_BODY, description="what the person typed or accepted; whole lines end with \\n"
    )


class LearnBody(BaseModel):
    user: str
    chars: int = Field(description="characters learned from")
    learned: int = Field(description="characters this person has taught in all, since they were created or reset")
    steps: int = Field(description="updates applied")
    ms: float = Field(description="time taken, milliseconds")
    rolled_back: bool = Field(description="a divergent update was detected and undone")


class ResetBody(BaseModel):
    user: str
    known: bool = Field(description="whether the service held anything for this user")


class ResetRequest(BaseModel):
    """A reset changes state: it is a POST with a JSON body (`{}`), which a page of another
    origin cannot send without the browser asking this service first."""

    model_config = ConfigDict(extra="forbid")


class PersonBody(BaseModel):
    user: str = Field(description="the person's id (in every answer about them)")
    token: str = Field(description="their secret: send it as `Authorization: Bearer …`; it is shown only now")


class People:
    """The people the service adapts to: calling it gives the PersonalCompleters of the engine now
    (a new engine, after a lifespan restart, starts with nobody)."""

    def __init__(self, engine: Callable[[], Engine], max_users: int, identities: Identities | None = None):
        self._engine = engine
        self.max_users = max_users
        self.identities = identities if identities is not None else Identities(max_users)  # who calls
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

    async def on_model_thread(user: str, job: Callable[[], dict[str, Any]]) -> Response:
        try:  # a person's jobs are counted against them (nextchar.service.fairness)
            return JSONResponse(await engine().run(job, client="person:" + user))
        except Overloaded as exc:
            return overloaded_response(client=isinstance(exc, ClientOverloaded))
        except UserError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    errors = error_responses(400, 401, 429, 503, meanings=MEANINGS)
    User = Annotated[str, Depends(_caller(people))]
    _add_people_route(router, people, engine)
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
        infix: Annotated[bool, Query(description="as /api/complete, over what this person taught too")] = False,
    ) -> Response:
        k_, mode_ = k or settings.default_k, mode or engine().default_mode

        def job() -> dict[str, Any]:
            completer = people().get(user).completer
            next_chars = completer.next_chars(q, chars)
            suggestions = completer.suggest(q, k=k_, mode=mode_, typos=typos)
            inside = completer.infix(q, k_) if infix else None
            return complete_json(q, mode_, k_, typos, suggestions, next_chars, inside)

        return await on_model_thread(user, job)

    @router.post(
        "/api/personal/learn",
        response_model=LearnBody,
        responses=errors,
        summary="Adapt this user's weights on what they typed or accepted",
    )
    async def personal_learn(user: User, body: LearnRequest) -> Response:
        def job() -> dict[str, Any]:
            person = people().get(user)
            report = person.learn(body.text)
            return {
                "user": user,
                "chars": report.chars,
                "learned": person.learned_chars,
                "steps": report.steps,
                "ms": report.seconds * 1e3,
                "rolled_back": report.rolled_back,
            }

        return await on_model_thread(user, job)

    @router.post(
        "/api/personal/reset",
        response_model=ResetBody,
        responses=errors,
        summary="Forget everything learned for this user",
    )
    async def personal_reset(user: User, body: ResetRequest) -> Response:
        return await on_model_thread(user, lambda: {"user": user, "known": people().reset(user)})

    return router


def _caller(people: People) -> Callable[..., str]:
    """The dependency that names the person a call comes from (their bearer token), else 401."""
    bearer = HTTPBearer(auto_error=False, description="the token POST /api/personal/people answered")

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        user = people.identities.who(credentials.credentials if credentials else None)
        if user is None:
            raise HTTPException(401, MEANINGS[401], headers={"WWW-Authenticate": "Bearer"})
        return user

    return caller


def _add_people_route(router: APIRouter, people: People, engine: Callable[[], Engine]) -> None:
    """POST /api/personal/people: a new person (nextchar.service.identity)."""

    @router.post(
        "/api/personal/people",
        status_code=201,
        response_model=PersonBody,
        responses=error_responses(401, 429, meanings=MEANINGS),
        summary="A new person: their id and the token that proves it is them",
    )
    async def personal_people(
        authorization: Annotated[
            str | None, Header(description="`Bearer <issuer secret>`, where the service asks for one")
        ] = None,
    ) -> Response:
        scheme, _, secret = (authorization or "").partition(" ")
        if not people.identities.may_create(secret if scheme.lower() == "bearer" else None):
            raise HTTPException(401, "creating people needs the issuer secret", headers={"WWW-Authenticate": "Bearer"})
        try:
            user, token, evicted = people.identities.create()
        except Refused as exc:
            return JSONResponse(
                {"detail": str(exc)}, status_code=exc.status, headers={"Retry-After": str(exc.retry_after)}
            )
        if evicted is not None:  # the idle person whose place this is: their state goes with them
            await engine().run(lambda: people().reset(evicted))
        return JSONResponse({"user": user, "token": token}, status_code=201)
