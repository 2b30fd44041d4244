"""The console's endpoints (all under ``/console``): the login form, the pages, their JSON, a
thread's media and the static files; the chat box's stream is :mod:`.chat`. See
:mod:`tmo_graph.server.console`."""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from tmo_graph.media.store import stored_file
from tmo_graph.server.auth import allowed_policies, check_key, thread_header
from tmo_graph.server.console import charts
from tmo_graph.server.console.access import COOKIE, Viewer, require_admin, viewer_of
from tmo_graph.server.console.chat import router as chat_router
from tmo_graph.server.console.overview import Overview, build_overview
from tmo_graph.server.console.reading import ThreadData, audit_lines, read_thread, visible_threads
from tmo_graph.server.errors import ApiError
from tmo_graph.server.limits import LimitExceeded, read_body
from tmo_graph.server.media import media_response, names_media
from tmo_graph.server.runtime import ServerState, server_state
from tmo_graph.server.schemas import model_id
from tmo_graph.threads.owners import OwnedThread

if TYPE_CHECKING:
    from jinja2 import Environment

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
# The threads a page reads (each is one state read): the most recently started.
MAX_THREADS = 200

router = APIRouter(prefix="/console", include_in_schema=False)
router.include_router(chat_router)
AppState = Annotated[ServerState, Depends(server_state)]
# Pages: no caching, no framing, scripts and styles from this server only.
PAGE_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self'; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


@cache
def _templates() -> Environment:
    # Imported on the first page, not at start-up: a chat request never renders one.
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
    )
    env.filters["usd"] = lambda v: "-" if v is None else f"${v:.6f}"
    env.filters["secs"] = lambda v: "-" if v is None else f"{v:.2f} s"
    return env


def _page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _error_page(error: ApiError, viewer: Viewer | None = None) -> HTMLResponse:
    if error.status == 401:
        return _page("login.html", 401, message=error.message)
    return _page("error.html", error.status, error=error, viewer=viewer)


async def _owned(state: ServerState, viewer: Viewer, thread_id: str) -> OwnedThread:
    """The thread, when the viewer may open it; else the API's 404 (ids cannot be probed)."""
    thread_header(thread_id)  # malformed: 400
    owner = await state.owners.owner(thread_id)
    if owner is None or not viewer.sees(owner):
        raise ApiError(
            404,
            f"no thread {thread_id!r} for this caller",
            "not_found_error",
            code="thread_not_found",
        )
    return next(
        (t for t in await state.owners.threads(owner) if t.thread_id == thread_id),
        OwnedThread(thread_id, owner, 0.0),
    )


# ---- login -------------------------------------------------------------------------------


@router.get("/login", response_model=None)
async def login_page() -> HTMLResponse:
    return _page("login.html")


@router.post("/login", response_model=None)
async def login(request: Request, state: AppState) -> HTMLResponse | RedirectResponse:
    """The form's key, checked, into the cookie; back to the threads."""
    try:
        raw = await read_body(request.stream(), request.headers.get("content-length"), 4096)
    except LimitExceeded as exc:
        raise ApiError(exc.status, "the login form takes one API key", param="key") from None
    form = parse_qs(raw.decode(errors="replace"))
    key = (form.get("key") or [""])[0].strip()
    try:
        check_key(key or None, request, state)
    except ApiError as error:
        return _error_page(error)
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/console",
    )
    return response


@router.post("/logout", response_model=None)
async def logout() -> RedirectResponse:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


# ---- pages -------------------------------------------------------------------------------


async def _threads(state: ServerState, viewer: Viewer) -> list[ThreadData]:
    """The viewer's threads (the most recently started :data:`MAX_THREADS`), newest answer
    first."""
    audit = audit_lines(state)
    owned = (await visible_threads(state, viewer))[:MAX_THREADS]
    threads = [await read_thread(state, t, viewer, audit) for t in owned]
    return sorted(threads, key=lambda t: t.updated, reverse=True)


def _thread_json(thread: ThreadData, turns: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "thread_id": thread.thread_id,
        "user": thread.owned.user_id,
        "updated": thread.updated,
        "turns": len(thread.turns),
        "route_mix": thread.route_mix(),
        "cost_usd": thread.cost_usd,
        "cloud_usd": thread.cloud_usd,
    }
    if turns:
        out["dialogue"] = [
            {
                "turn": t.number,
                "route": t.route,
                "private": t.private,
                "question": t.question,
                "answer": t.answer,
                "views_sent": list(t.record.get("views_sent") or []),
                "images_sent": [asdict(i) for i in t.sent_images],
                "clips_sent": t.clips,
                "redactions": t.redactions,
                "confidence": t.record.get("confidence"),
                "escalated": bool(t.record.get("escalated")),
                "fallback": t.record.get("fallback"),
                "budget_reached": t.budget_reached,
                "latency_s": t.record.get("latency_s"),
                "cost_usd": t.record.get("cost_usd"),
                "cloud_usd": t.cloud_usd,
                "always_cloud_usd": t.always_cloud_usd,
                "budget_left": t.record.get("budget_left"),
                "time": t.time,
                "labels": t.labels,
            }
            for t in thread.turns
        ]
    return out


@router.get("", response_model=None)
async def threads_page(request: Request, state: AppState) -> HTMLResponse:
    try:
        viewer = viewer_of(request, state)
    except ApiError as error:
        return _error_page(error)
    threads = await _threads(state, viewer)
    models = [model_id(p) for p in allowed_policies(viewer.caller, state.settings)]
    return _page("threads.html", viewer=viewer, threads=threads, models=models)


@router.get("/api/threads")
async def threads_json(request: Request, state: AppState) -> dict[str, Any]:
    viewer = viewer_of(request, state)
    threads = await _threads(state, viewer)
    return {
        "user": viewer.user,
        "admin": viewer.admin,
        "threads": [_thread_json(t, False) for t in threads],
    }


async def _one(viewer: Viewer, state: ServerState, thread_id: str) -> ThreadData:
    owned = await _owned(state, viewer, thread_id)
    return await read_thread(state, owned, viewer, audit_lines(state))


@router.get("/threads/{thread_id}", response_model=None)
async def thread_page(thread_id: str, request: Request, state: AppState) -> HTMLResponse:
    viewer = None
    try:
        viewer = viewer_of(request, state)
        thread = await _one(viewer, state, thread_id)
    except ApiError as error:
        return _error_page(error, viewer)
    points = [(t.number, t.record.get("budget_left") or {}) for t in thread.turns]
    latency = charts.line_chart(
        [(n, float(b.get("latency_s", 0.0))) for n, b in points],
        "latency budget left",
        "s",
        "#ef6c00",
    )
    money = charts.line_chart(
        [(n, float(b.get("cost_usd", 0.0))) for n, b in points],
        "money budget left",
        "USD",
        "#1565c0",
    )
    models = [model_id(p) for p in allowed_policies(viewer.caller, state.settings)]
    return _page(
        "thread.html",
        viewer=viewer,
        thread=thread,
        charts=[latency, money],
        can_chat=viewer.owns(thread.owned.user_id),
        models=models,
    )


@router.get("/api/threads/{thread_id}")
async def thread_json(thread_id: str, request: Request, state: AppState) -> dict[str, Any]:
    thread = await _one(viewer_of(request, state), state, thread_id)
    return _thread_json(thread, True)


async def _overview(viewer: Viewer, state: ServerState) -> Overview:
    require_admin(viewer)
    threads = await _threads(state, viewer)
    keys = state.keys.ring.keys() if state.keys is not None else []
    return build_overview(
        threads, audit_lines(state), keys, state.settings.spending.daily_cost_cap_usd
    )


@router.get("/overview", response_model=None)
async def overview_page(request: Request, state: AppState) -> HTMLResponse:
    viewer = None
    try:
        viewer = viewer_of(request, state)
        view = await _overview(viewer, state)
    except ApiError as error:
        return _error_page(error, viewer)
    spend = charts.spend_bars(
        [(f"{s.user} {s.day}", s.usd, s.cap_usd) for s in view.spend],
        "cloud spend per user per UTC day (audit log) against the daily cap",
    )
    mix = charts.stacked_bars(view.routes_by_day, "turns per day by route")
    return _page("overview.html", viewer=viewer, view=view, spend=spend, mix=mix)


@router.get("/api/overview")
async def overview_json(request: Request, state: AppState) -> dict[str, Any]:
    view = await _overview(viewer_of(request, state), state)
    return asdict(view)


# ---- media, static -----------------------------------------------------------------------


@router.get("/threads/{thread_id}/media/{sha256}", response_model=None)
async def thread_media(
    thread_id: str, sha256: str, request: Request, state: AppState
) -> FileResponse:
    """A thread's stored image, for whoever may open the thread (the /v1 route's rules, plus
    an admin), and only a hash the thread's messages name."""
    viewer = viewer_of(request, state)
    await _owned(state, viewer, thread_id)
    path = stored_file(state.media_dir, sha256)
    if path is None or not names_media(await state.runner.stored(thread_id), sha256):
        raise ApiError(
            404, "no such media in this thread", "not_found_error", code="media_not_found"
        )
    return media_response(path)


@router.get("/static/{name}", response_model=None)
async def static(name: str) -> FileResponse:
    if name not in STATIC:
        raise ApiError(404, f"no static file {name[:64]!r}", "not_found_error")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name])
