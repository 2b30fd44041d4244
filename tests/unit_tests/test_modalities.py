"""The one schema of a named device modality (a camera view or an audio source): every
surface that takes ``views`` holds them to it and words a bad one the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import fake_services
from tmo_graph.chat_model import TMOChatModel
from tmo_graph.cli.dialogues import parse_dialogue
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.media.modalities import Modality, check_views
from tmo_graph.state import ModalitySpec

BAD_VIEWS: list[tuple[Any, str]] = [
    ({"cam": "x.png"}, "view 'cam' is a str, not a view spec (got 'x.png')"),
    ({"cam": {"img": "x.png"}}, "view 'cam' has an unknown field `img` (got 'x.png')"),
    ({"cam": {"private": True}}, "view 'cam' has neither an image, an audio clip nor a"),
    ({"cam": {"image": "a.png", "audio": "b.wav"}}, "view 'cam' has both an image and an audio"),
    ({"cam": {"description": "d", "private": "no"}}, "view 'cam': field `private` must be True"),
    ({"cam": {"image": " "}}, "view 'cam': field `image`: must not be empty (got ' ')"),
    ({"cam": {"image": 3}}, "view 'cam': field `image`: input should be a valid string"),
    ({"": {"description": "d"}}, "view name '' is not a name"),
]


def test_the_state_stores_the_fields_of_the_one_schema() -> None:
    assert set(ModalitySpec.__annotations__) == set(Modality.model_fields)


def test_views_come_back_as_given() -> None:
    # No defaults filled in: the checkpoint stores what the caller sent.
    views = {"cam": {"image": "x.png"}, "mic": {"audio": "m.wav", "private": True}}
    assert check_views(views) == views


@pytest.mark.parametrize(("views", "problem"), BAD_VIEWS)
def test_the_graph_and_the_chat_model_word_a_bad_view_alike(
    tmp_path: Path, views: Any, problem: str
) -> None:
    with pytest.raises(TmoGraphError) as checked:
        check_views(views)
    assert str(checked.value).startswith(problem) and "Fix: " in str(checked.value)
    graph = build_graph(fake_services(tmp_path), checkpointer=InMemorySaver())
    with pytest.raises(TmoGraphError) as in_graph:
        graph.invoke(
            {"messages": [("user", "hi")], "views": views},
            {"configurable": {"thread_id": "t"}},
            context=Context(),
        )
    with pytest.raises(TmoGraphError) as in_model:
        TMOChatModel(views=views)
    assert str(in_graph.value) == str(in_model.value) == str(checked.value)


@pytest.mark.parametrize(
    ("view", "error"),
    [
        (
            {"image": "a.png", "audio": "b.wav"},
            "d.jsonl:1: view `cam` has both an image and an audio clip. Fix: make them two "
            "views, e.g. 'bench_cam' (the image) and 'mic' (the audio clip)",
        ),
        (
            {"private": True},
            "d.jsonl:1: view `cam` has neither an image, an audio clip nor a description. "
            "Fix: give each view {'image': PATH, 'description': TEXT} (or 'audio': CLIP)",
        ),
        (
            {"description": "desk", "sha256": "ab" * 32},
            "d.jsonl:1: unknown field `views.cam.sha256`. "
            "Fix: use image, audio, description, private",
        ),
    ],
)
def test_a_dialogue_file_holds_its_views_to_the_same_schema(
    tmp_path: Path, view: dict[str, Any], error: str
) -> None:
    with pytest.raises(TmoGraphError) as raised:
        parse_dialogue({"views": {"cam": view}, "turns": ["hi"]}, tmp_path, "d.jsonl:1")
    assert str(raised.value) == error
