"""The expression an annotator typed for a task, remembered between interactive requests.

Label Studio 1.23.2's editor sends the TextArea's text in a request of its own, and with a click only the
keypoints of that label (no text): without this, a click after a typed correction would be combined with the
task's `$expression` instead of what the annotator typed. The web process remembers the typed text per
(project, task) for TYPED_TTL_S and uses it for the clicks and boxes that follow; typing anew replaces it,
clearing the TextArea forgets it.
"""
from __future__ import annotations

from typing import Optional

from jobs import keys

TYPED_TTL_S = 4 * 3600  # an annotation session on one task; refreshed by every request that uses it


def remember(state, project_key: str, task_id, text: str) -> None:
    state.set(keys.typed_expression(project_key, task_id), text, ex=TYPED_TTL_S)


def recall(state, project_key: str, task_id) -> Optional[str]:
    key = keys.typed_expression(project_key, task_id)
    text = state.get(key)
    if text is None:
        return None
    state.expire(key, TYPED_TTL_S)
    return text.decode() if isinstance(text, bytes) else text


def forget(state, project_key: str, task_id) -> None:
    state.delete(keys.typed_expression(project_key, task_id))
