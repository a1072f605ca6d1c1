"""From benchmark :class:`Example` rows to the adapter's :class:`Turn` units.

Images are decoded once per example and kept, since a training run visits each many
times. A missing or corrupt image raises :class:`~unsee.errors.DataError` naming the row.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from unsee.data.prompts import qa_prompt
from unsee.data.schema import Example
from unsee.errors import ConfigError
from unsee.models.base import Turn

_RECENT_CAP = 20000
_RECENT: dict[tuple[int, int], Image.Image] = {}  # kept decoded, up to the cap, for the next run to find
_LIVE: weakref.WeakValueDictionary[tuple[int, int], Image.Image] = weakref.WeakValueDictionary()


def image_of(ex: Example) -> Image.Image | None:
    """The decoded image, one object per distinct file: the nine questions on one photo share it.

    While anything holds a file's image (a turn, a method's map of whose photo it is), the same
    object comes back, past the cap of those kept for later too: methods tell photos apart by
    object, and a second object of one file would be a stranger's photo to them.
    """
    if ex.image is None:
        return None
    key = (hash(ex.image), len(ex.image))
    img = _LIVE.get(key)
    if img is None:
        img = _LIVE[key] = ex.pil_image()
    if key not in _RECENT:
        if len(_RECENT) >= _RECENT_CAP:
            _RECENT.clear()
        _RECENT[key] = img
    return img


def qa_turn(ex: Example, answer: str | None = None) -> Turn:
    """The plain question with its answer: the training form, and the log-likelihood MCQ form, whose
    prompt is the one scoring and the audits read (:func:`~unsee.data.prompts.qa_prompt`)."""
    return Turn(image_of(ex), qa_prompt(ex.question), ex.answer if answer is None else answer)


def qa_turns(examples: Sequence[Example]) -> list[Turn]:
    return [qa_turn(e) for e in examples]


def pack_turns(examples: Sequence[Example], size: int, rng: np.random.Generator,
               last: Collection[str] = ()) -> list[Turn]:
    """Questions about one image (or, without an image, one entity) as conversations of up to ``size`` exchanges.

    The order inside each group is shuffled by ``rng``. An exchange whose answer is in ``last`` (a
    person's name) closes its conversation, and a conversation holds at most one: no answer in it,
    a second name included, can be read off the name instead of the image. ``size=1`` gives one turn
    per example, in order, and draws nothing from ``rng``.
    """
    if size < 1:
        raise ValueError(f"pack size must be >= 1, got {size}")
    if size == 1:
        return qa_turns(examples)
    groups: dict[tuple[str, bytes | None], list[Example]] = {}
    for e in examples:
        groups.setdefault((e.entity, e.image), []).append(e)
    turns: list[Turn] = []
    for group in groups.values():
        order = [group[i] for i in rng.permutation(len(group))]
        named = [e for e in order if e.answer in last]
        rest = iter([e for e in order if e.answer not in last])
        # as few conversations as hold the group, and one more per name beyond that
        n = max(len(named), -(-len(order) // size))
        for i in range(n):
            closer = named[i : i + 1]
            chunk = [e for _, e in zip(range(size - len(closer)), rest, strict=False)] + closer
            if chunk:
                turns.append(dataclasses.replace(qa_turn(chunk[0]), follow=tuple(
                    (qa_prompt(e.question), e.answer) for e in chunk[1:])))
    return turns


def check_split(batch_size: int, world: int) -> None:
    """Each process takes an equal share of every global batch: with unequal shares the average of the
    processes' mean losses would weigh the rows of a smaller share more than one process would."""
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {world} processes; use a multiple "
                          f"of {world} (and scale lr), so that the run does not depend on the process count")


class Stream:
    """An endless, seeded, reshuffled-every-epoch sequence of batches over a list of turns.

    With several processes each takes its own slice of the same global batch, so a
    two-process run sees exactly the data of a one-process run.

    Given ``lengths`` (the token count of each turn), each epoch's order is cut into windows
    of ``window`` batches and each window sorted by length before it is batched, then the
    batches are shuffled: a batch pads to its longest row, and mixing a one-line answer with a
    five-exchange conversation wastes most of the short row. The windows keep the order random
    at the scale of an epoch; the shuffle keeps long and short batches from coming in runs.
    """

    def __init__(self, turns: Sequence[Turn], batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 lengths: Sequence[int] | None = None, window: int = 50):
        if not turns:
            raise ValueError("a stream needs at least one item")
        if lengths is not None and len(lengths) != len(turns):
            raise ValueError(f"{len(lengths)} lengths for {len(turns)} turns")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        check_split(batch_size, world)
        self.turns = list(turns)
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.rank, self.world = rank, world
        self.lengths = None if lengths is None else [int(n) for n in lengths]
        self.window = window
        self._order: list[int] = []

    def __iter__(self) -> Iterator[list[Turn]]:
        return self

    def __next__(self) -> list[Turn]:
        while len(self._order) < self.batch_size:
            self._refill()
        idx, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        mine = idx[self.rank :: self.world]
        return [self.turns[i] for i in mine]

    def _refill(self) -> None:
        """Append one epoch. With lengths, the queue is regrouped whole: an incomplete batch
        goes last and joins the next epoch's grouping, so no turn is ever dropped."""
        order = self._order + torch.randperm(len(self.turns), generator=self.gen).tolist()
        if self.lengths is None:
            self._order = order
            return
        size, span = self.batch_size, self.window * self.batch_size
        full: list[list[int]] = []
        rest: list[int] = []
        for start in range(0, len(order), span):
            window = sorted(order[start : start + span], key=self.lengths.__getitem__)
            for i in range(0, len(window), size):
                batch = window[i : i + size]
                if len(batch) == size:
                    full.append(batch)
                else:
                    rest.extend(batch)
        perm = torch.randperm(len(full), generator=self.gen).tolist()
        self._order = [i for p in perm for i in full[p]] + rest

    def __len__(self) -> int:
        return len(self.turns)

    def preview(self, k: int) -> list[list[Turn]]:
        """The next ``k`` batches, leaving the stream where it was: what a method measures before it
        trains (saliency masks) is then no part of the epoch it trains on, whose first batches are these."""
        state = self.state_dict()
        try:
            return [next(self) for _ in range(k)]
        finally:
            self.load_state_dict(*state)

    def state_dict(self) -> tuple[torch.Tensor, list[int]]:
        """The generator state and the queue of the current epoch: what a resumed run needs."""
        return self.gen.get_state(), list(self._order)

    def load_state_dict(self, gen_state: torch.Tensor, order: list[int]) -> None:
        self.gen.set_state(gen_state)
        self._order = [int(i) for i in order]
