"""What the tabs share: the context their ``wire`` functions get, the queue settings and
progress marker of their events, helpers that shape results for components, and the
session plumbing of the page (its state and what happens when a browser tab closes)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal, TypedDict, TypeVar

import gradio as gr

from ..files import SavedImage
from ..services import Services, SessionState

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CPU_QUEUE",
    "GPU",
    "QUICK_CONCURRENCY",
    "TRACK",
    "UI_ONLY",
    "AppContext",
    "EndSession",
    "Queue",
    "bind",
    "gallery",
    "session_state",
    "table",
]

#: The concurrency group of model work (generation, swap, dataset jobs, training).
GPU = "gpu"
#: Quick events (face and landmark detection, model status) run this many at a time each.
QUICK_CONCURRENCY = 4
#: The default of a handler's ``progress`` parameter: Gradio passes a live tracker in its
#: place (tqdm bars inside the handler are shown too).
TRACK = gr.Progress(track_tqdm=True)


R = TypeVar("R")


class Queue(TypedDict):
    """The queue settings of an event: its concurrency group and how many run at a time."""

    concurrency_id: str
    concurrency_limit: int


class UiOnly(TypedDict):
    queue: bool
    api_visibility: Literal["private"]


#: CPU-bound work (anonymization, identity sampling): two at a time, beside the GPU group.
CPU_QUEUE: Queue = {"concurrency_id": "cpu", "concurrency_limit": 2}
#: Events that only change the page: outside the queue and the API.
UI_ONLY: UiOnly = {"queue": False, "api_visibility": "private"}


@dataclass(frozen=True)
class AppContext:
    """What every tab's ``wire`` gets: the services, the session's state component (holds a
    :class:`~facegen.app.web.services.SessionState`) and how many model jobs run at once."""

    services: Services
    state: gr.State
    gpu_concurrency: int = 1

    @property
    def gpu(self) -> Queue:
        """The queue settings of model work: the ``gpu`` group, ``gpu_concurrency`` at once."""
        return {"concurrency_id": GPU, "concurrency_limit": self.gpu_concurrency}


def bind(handler: Callable[..., R], *args: object) -> partial[R]:
    """``handler`` with its first arguments given (the services, …): what an event calls.

    Gradio sees the remaining parameters (they name the endpoint's API parameters), and the
    handler's name and docstring (the endpoint's description on the API page)."""
    bound = partial(handler, *args)
    bound.__name__ = handler.__name__  # type: ignore[attr-defined]
    bound.__doc__ = handler.__doc__
    return bound


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> pd.DataFrame:
    """``rows`` as a data frame for a ``gr.Dataframe`` or a plot."""
    import pandas as pd

    return pd.DataFrame(rows, columns=list(headers))


def gallery(saved: Sequence[SavedImage], captions: Sequence[str]) -> list[tuple[str, str]]:
    """``(file, caption)`` pairs for a ``gr.Gallery``."""
    return [(str(s.path), c) for s, c in zip(saved, captions)]


class EndSession:
    """The page's unload callback: when a browser tab closes, its session's files are deleted
    after ``services.unload_grace_s`` (Gradio itself would keep them an hour); a job still
    running defers it further (see :meth:`Services.drop_session`)."""

    def __init__(self, demo: gr.Blocks, services: Services) -> None:
        self.demo = demo
        self.services = services

    def __call__(self, request: gr.Request) -> None:
        app = getattr(self.demo, "server_app", None)
        holder = getattr(app, "state_holder", None)
        if holder is None or request is None or not request.session_hash:
            return
        timer = threading.Timer(
            self.services.unload_grace_s, holder.delete_state, args=(request.session_hash,)
        )
        timer.daemon = True
        timer.start()


def session_state(demo: gr.Blocks, services: Services) -> gr.State:
    """The session's :class:`SessionState`, ended (its files deleted) when it expires or the
    browser tab closes. Call inside ``demo``'s ``with`` block."""
    state = gr.State(
        SessionState(), time_to_live=services.session_ttl_s, delete_callback=services.drop_session
    )
    demo.unload(EndSession(demo, services))
    return state
