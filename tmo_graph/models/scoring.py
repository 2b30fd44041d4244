"""Prompt understanding by embedding similarity: task category and per-view association.

Both work on any LangChain ``Embeddings`` (the local MiniLM by default, a deterministic
fake in unit tests) and cache the embeddings of their fixed texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from langchain_core.embeddings import Embeddings

# The M4A1 task vocabulary, with labelled example prompts written in the style of the dataset.
TASK_EXAMPLES: dict[str, tuple[str, ...]] = {
    "Assistive System": (
        "Please turn on all the lights in the kitchen.",
        "Turn the temperature down a bit, I'm feeling hot.",
        "Set a timer for ten minutes for the pasta.",
        "Play a cooking tutorial on the TV.",
        "Can you preheat the oven to 200 degrees?",
        "Remind me to take the chicken out of the freezer tonight.",
    ),
    "Recommendation": (
        "What should I cook for dinner with what I have on the counter?",
        "Recommend a wine that goes with this dish.",
        "Suggest a healthy snack I could make right now.",
        "Which of these pans is best for frying an egg?",
        "Can you recommend a recipe for the vegetables in front of me?",
        "What dessert would go well after this meal?",
    ),
    "Message Editing": (
        "Write a message to my roommate asking him to buy milk.",
        "Edit this text to sound more polite: bring the plates now.",
        "Send my wife a note that dinner will be ready at seven.",
        "Draft an email inviting my friends to a barbecue on Saturday.",
        "Rewrite my shopping list message so it is shorter.",
        "Reply to my mom's text and tell her the recipe worked.",
    ),
    "Query": (
        "How many eggs are on the table?",
        "What is the boiling point of water at high altitude?",
        "Where did I put the cutting board?",
        "What is in the pot on the stove?",
        "How long does it take to boil an egg?",
        "Is the milk in the fridge still fresh?",
        "Who invented the microwave oven?",
        "Which country does paella come from?",
        "Who wrote this famous cookbook?",
    ),
}


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


class TaskClassifier:
    """Nearest labelled example by cosine similarity (k-NN with k=1 over the examples)."""

    def __init__(
        self, embeddings: Embeddings, examples: Mapping[str, Sequence[str]] = TASK_EXAMPLES
    ) -> None:
        self.labels = [task for task, texts in examples.items() for _ in texts]
        texts = [text for texts in examples.values() for text in texts]
        self.tasks = list(examples)
        self._matrix = _unit(np.asarray(embeddings.embed_documents(texts), dtype=np.float32))

    def classify_vector(self, prompt_vector: Sequence[float]) -> str:
        sims = self._matrix @ _unit(np.asarray(prompt_vector, dtype=np.float32))
        return self.labels[int(np.argmax(sims))]


class AssociationScorer(Protocol):
    """Scores how relevant each view is to the prompt (higher is more relevant)."""

    def score(
        self, prompt_vector: Sequence[float], captions: Mapping[str, str]
    ) -> dict[str, float]: ...


class TextAssociationScorer:
    """Cosine similarity between the prompt and each view's description or caption."""

    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings
        self._cache: dict[str, np.ndarray] = {}

    def _caption_vector(self, caption: str) -> np.ndarray:
        if caption not in self._cache:
            vector = np.asarray(self.embeddings.embed_query(caption), dtype=np.float32)
            self._cache[caption] = _unit(vector)
        return self._cache[caption]

    def score(
        self, prompt_vector: Sequence[float], captions: Mapping[str, str]
    ) -> dict[str, float]:
        prompt = _unit(np.asarray(prompt_vector, dtype=np.float32))
        return {
            name: round(float(self._caption_vector(caption) @ prompt), 4)
            for name, caption in captions.items()
        }
