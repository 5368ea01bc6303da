"""The functional core of the read model: pure folds from events to state.

Every aggregate (a pod with its roster, a request with its claims, a member, an offer, a
resource) is rebuilt by folding *all* of its events sorted by ``(ts, id)``. Because the fold
sees a set, sorted by a fixed key, the state is a function of the set of events and not of
the order they arrived in: every node holding the same events shows the same state.

Authorisation is part of the fold: an event counts only if its author is its pod's key or
an organizer on that pod's roster at the event's timestamp (see :class:`Roster`). Events
that fail that test are kept in the log but *soft-failed*: shown in history, never applied.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import singledispatch
from typing import Literal

import msgspec

from podlink.protocol import kinds as k

Outcome = Literal["applied", "ignored", "soft-failed"]


class EventView(msgspec.Struct, frozen=True, gc=False):
    """What a fold needs of one event: header fields and the decoded body (None if dropped
    or of an unknown kind)."""

    id: bytes
    pod: bytes
    author: bytes
    lane: str
    seq: int
    ts: int
    kind: str
    refs: tuple[bytes, ...]  # may be () for kinds not in REFS_READ (folds never read them)
    body: k.Body | None
    pos: int = 0  # local store position: where projection rows of this event are kept

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.ts, self.id)


#: How widely a lane shares: a change by an aggregate's own pod counts only if shared at
#: least as widely as the aggregate itself. One shared less widely (a pod-lane withdraw of
#: a network offer) would change the state only where it can be seen: the pods that
#: cannot see it would keep another state for good.
LANE_REACH = {"pod": 0, "peers": 1, "network": 2}


def narrower(ev: EventView, lane: str) -> bool:
    """True if ``ev`` is shared less widely than an aggregate in ``lane``."""
    return LANE_REACH.get(ev.lane, 0) < LANE_REACH.get(lane, 0)


def sort_events(events: list[EventView]) -> list[EventView]:
    """The one total order every fold uses: timestamp, then id."""
    return sorted(events, key=lambda e: (e.ts, e.id))


# -------------------------------------------------------------------------------- roster


@dataclass
class Tenure:
    """One stretch of time during which ``key`` acts for ``pod``: [from_ts, until_ts)."""

    pod: bytes
    key: bytes
    name: str
    from_ts: int
    add_id: bytes
    until_ts: int | None = None
    remove_id: bytes | None = None

    def covers(self, ts: int) -> bool:
        return self.from_ts <= ts and (self.until_ts is None or ts < self.until_ts)


_VERSIONS = itertools.count(1)


def _from_ts(t: Tenure) -> int:
    return t.from_ts


def _in_time(t: Tenure) -> tuple[int, float]:
    return t.from_ts, math.inf if t.until_ts is None else t.until_ts


class Roster:
    """Who may act for which pod, and when. A pod's own key always may.

    Besides the tenures (what the roster fold counts), the keys **named** by any stored
    roster.add of a pod, counted or not. Ingest stores an event whose author is named
    even when no tenure covers its time (the folds soft-fail it), and holds events of
    keys never named as pending. Naming only grows with the set of stored events, so what
    is stored does not depend on the order events arrive in; a gate on tenures did (an
    organizer's event stored before news of her removal, refused after it, and her later
    events, authorised again after a re-add, blocked behind the refused one)."""

    def __init__(
        self,
        tenures: dict[bytes, list[Tenure]] | None = None,
        named: dict[bytes, set[bytes]] | None = None,
    ) -> None:
        self.tenures: dict[bytes, list[Tenure]] = {}  # pod -> tenures
        self._by_key: dict[tuple[bytes, bytes], list[Tenure]] = {}  # (pod, key) -> tenures
        self.named: dict[bytes, set[bytes]] = {}  # pod -> keys named by its roster.adds
        # pod -> (ts, id) of the last roster event its tenures were folded from (a full
        # fold sets it): later events fold onto the tenures (extend_pod), not from scratch
        self.folded_to: dict[bytes, tuple[int, bytes]] = {}
        # Changes whenever some tenure does (and differs between Roster objects): a fold
        # kept from before is only continued under the roster it was made with.
        self.version = next(_VERSIONS)
        for pod in {*(tenures or {}), *(named or {})}:
            self.set_pod(pod, (tenures or {}).get(pod, []), (named or {}).get(pod, set()))

    def authorised(self, pod: bytes, author: bytes, ts: int) -> bool:
        if author == pod:
            return True
        tenures = self._by_key.get((pod, author))
        if not tenures:
            return False
        if len(tenures) == 1:  # the common case, checked per event
            return tenures[0].covers(ts)
        # A key's tenures follow one another without overlap (fold_roster): only the last
        # one begun by ``ts`` can cover it. Found by bisection, for a key added and removed
        # thousands of times.
        i = bisect_right(tenures, ts, key=_from_ts) - 1
        return i >= 0 and tenures[i].covers(ts)

    def snapshot(self) -> tuple[dict, ...]:
        """What ``restore`` needs to undo later ``set_pod`` and ``extend_pod`` calls
        (which replace a pod's lists, sets and tenures, never change them in place)."""
        return dict(self.tenures), dict(self._by_key), dict(self.named), dict(self.folded_to)

    def restore(self, snapshot: tuple[dict, ...]) -> None:
        self.tenures, self._by_key, self.named, self.folded_to = (dict(d) for d in snapshot)

    def is_named(self, pod: bytes, author: bytes) -> bool:
        """True for the pod's key and for keys some stored roster.add of the pod names."""
        return author == pod or author in self.named.get(pod, ())

    def set_pod(
        self,
        pod: bytes,
        tenures: list[Tenure],
        named: set[bytes],
        folded_to: tuple[int, bytes] | None = None,
    ) -> None:
        old = {(t.key, t.from_ts, t.until_ts) for t in self.tenures.get(pod, ())}
        if old != {(t.key, t.from_ts, t.until_ts) for t in tenures}:
            self.version = next(_VERSIONS)
        for key in {t.key for t in self.tenures.get(pod, ())}:
            self._by_key.pop((pod, key), None)
        self.tenures[pod] = tenures
        self.named[pod] = named
        if folded_to is None:
            self.folded_to.pop(pod, None)
        else:
            self.folded_to[pod] = folded_to
        # Each key's tenures in time order (as loaded from the table they are not): an
        # empty tenure [T, T) before the one that begins at T.
        for t in sorted(tenures, key=_in_time):
            self._by_key.setdefault((pod, t.key), []).append(t)

    def active_keys(self, pod: bytes) -> set[bytes]:
        return {t.key for t in self.tenures.get(pod, ()) if t.until_ts is None}

    def open_tenure(self, pod: bytes, key: bytes) -> Tenure | None:
        """The tenure ``key`` holds for ``pod`` now (no removal has ended it), if any."""
        tenures = self._by_key.get((pod, key)) or ()
        return tenures[-1] if tenures and tenures[-1].until_ts is None else None

    def extend_pod(
        self, pod: bytes, events: list[EventView]
    ) -> tuple[list[Tenure], list[tuple[Tenure, Tenure]]] | None:
        """Fold ``pod``'s new roster ``events`` onto its tenures, when they all sort after
        the last one folded; None when they do not (or nothing is folded yet): then the
        whole roster must be folded again (fold_roster).

        The same steps as fold_roster, from where it stopped: a roster streamed one event
        per batch (a live stream sends a page per event written) re-read and re-folded
        every roster event of the pod per event. Returns the tenures added, and the
        (old, new) pairs of tenures closed; nothing is changed in place (``snapshot``)."""
        to = self.folded_to.get(pod)
        ordered = sort_events(events)
        if to is None or not ordered or (ordered[0].ts, ordered[0].id) <= to:
            return None
        def last_of(key: bytes) -> Tenure | None:
            tenures = self._by_key.get((pod, key))
            return tenures[-1] if tenures else None

        added, closed = _fold_tenures(pod, ordered, last_of)
        swap = {id(old): new for old, new in closed}
        self.tenures[pod] = [swap.get(id(t), t) for t in self.tenures.get(pod, ())] + added
        touched: dict[bytes, list[Tenure]] = {}
        for t in [*(new for _, new in closed), *added]:
            touched.setdefault(t.key, [])
        for t in added:
            touched[t.key].append(t)
        for key, fresh in touched.items():
            before = self._by_key.get((pod, key), [])
            self._by_key[(pod, key)] = [swap.get(id(t), t) for t in before] + fresh
        self.folded_to[pod] = (ordered[-1].ts, ordered[-1].id)
        if added or closed:
            self.version = next(_VERSIONS)
        return added, closed


def named_keys(pod: bytes, events: list[EventView]) -> set[bytes]:
    """Keys that ``pod``'s roster.add events name, whether the fold counts them or not."""
    return {e.body.key for e in events if e.pod == pod and isinstance(e.body, k.OrganizerAdded)}


def fold_roster(pod: bytes, events: list[EventView]) -> list[Tenure]:
    """Tenures of ``pod``'s organizers from its roster.add/remove events."""
    return _fold_tenures(pod, sort_events(events), lambda key: None)[0]


def _fold_tenures(
    pod: bytes, ordered: list[EventView], last_before: Callable[[bytes], Tenure | None]
) -> tuple[list[Tenure], list[tuple[Tenure, Tenure]]]:
    """Fold roster events, in (ts, id) order, onto the tenures folded before them, of
    which ``last_before`` gives each key's last: the tenures added, and (old, new) for
    those of before that these events close (never changed in place).

    A key's last tenure only: events fold in (ts, id) order, so every earlier tenure of
    the key ended at or before ``ts`` and at most the last one is open. (Scanning them
    all, a key added and removed thousands of times made the fold quadratic.)"""
    added: list[Tenure] = []
    mine: set[int] = set()  # ids of the tenures made here (closed in place)
    closed: list[tuple[Tenure, Tenure]] = []
    last: dict[bytes, Tenure | None] = {}

    def last_of(key: bytes) -> Tenure | None:
        return last[key] if key in last else last_before(key)

    def active(key: bytes, ts: int) -> bool:
        return key == pod or ((t := last_of(key)) is not None and t.covers(ts))

    for ev in ordered:
        body = ev.body
        if ev.pod != pod or not active(ev.author, ev.ts):
            continue
        if isinstance(body, k.OrganizerAdded):
            if not active(body.key, ev.ts):
                tenure = Tenure(pod, body.key, body.name, ev.ts, ev.id)
                added.append(tenure)
                mine.add(id(tenure))
                last[body.key] = tenure
        elif isinstance(body, k.OrganizerRemoved):
            t = last_of(body.key)
            if t is None or t.until_ts is not None:
                continue
            if id(t) in mine:
                t.until_ts, t.remove_id = ev.ts, ev.id
            else:
                new = replace(t, until_ts=ev.ts, remove_id=ev.id)
                closed.append((t, new))
                last[body.key] = new
    return added, closed


# -------------------------------------------------------------------------------- pods


@dataclass
class PodState:
    pod: bytes
    name: str = ""
    zone: str = ""
    description: str = ""
    categories: list[str] = field(default_factory=list)
    contact: str = ""
    founded_ts: int | None = None
    updated_ts: int | None = None


def fold_pod(pod: bytes, events: list[EventView], roster: Roster) -> PodState | None:
    """Directory entry of a pod: its genesis, then the latest info by an authorised author."""
    state: PodState | None = None
    for ev in sort_events(events):
        body = ev.body
        if ev.pod != pod or not roster.authorised(pod, ev.author, ev.ts):
            continue
        if isinstance(body, k.PodFounded):
            if ev.author != pod:
                continue  # only the pod's own key founds it
            state = state or PodState(pod)
            if state.founded_ts is None:
                state.founded_ts = ev.ts
            if state.updated_ts is not None:
                continue  # a genesis never overrides info written before it in (ts, id)
        elif isinstance(body, k.PodInfoChanged):
            state = state or PodState(pod)
        else:
            continue
        state.name, state.zone, state.description = body.name, body.zone, body.description
        state.categories, state.contact = list(body.categories), body.contact
        state.updated_ts = ev.ts
    return state


# -------------------------------------------------------------------------------- requests

RequestStatus = Literal["open", "accepted", "fulfilled", "cancelled"]
ClaimStatus = Literal["pending", "accepted", "declined", "closed"]


@dataclass
class ClaimState:
    id: bytes
    request: bytes
    pod: bytes
    author: bytes
    lane: str
    by_member: bytes | None
    note: str
    ts: int
    status: ClaimStatus = "pending"
    decided_ts: int | None = None
    reason: str = ""  # why it was declined


@dataclass
class FulfilmentState:
    id: bytes
    request: bytes
    pod: bytes
    note: str
    hours: float | None
    ts: int


@dataclass
class Step:
    """One line of a request's history: what an event tried, and what came of it."""

    id: bytes
    kind: str
    pod: bytes
    author: bytes
    ts: int
    outcome: Outcome
    why: str = ""


@dataclass
class RequestState:
    id: bytes
    pod: bytes
    author: bytes
    lane: str
    title: str
    details: str
    category: str
    urgency: str
    needed_by: str | None
    area: str
    for_member: bytes | None
    opened_ts: int
    updated_ts: int
    status: RequestStatus = "open"
    accepted_claim: bytes | None = None
    closed_ts: int | None = None
    cancel_reason: str = ""
    claims: dict[bytes, ClaimState] = field(default_factory=dict)
    fulfilments: list[FulfilmentState] = field(default_factory=list)
    history: list[Step] = field(default_factory=list)
    # Answers that named this request for claims not (yet, in (ts, id) order) seen:
    # claim id -> (decision, ts, reason), applied to the claim's row when it comes.
    decisions: dict[bytes, tuple[str, int, str]] = field(default_factory=dict)


class _Ignore(Exception):
    """A transition that does not apply in the request's current state (with why)."""


@singledispatch
def _apply(body: object, req: RequestState, ev: EventView) -> None:
    raise _Ignore(f"{ev.kind} does not change a request")


@_apply.register
def _(body: k.RequestUpdated, req: RequestState, ev: EventView) -> None:
    if req.status in ("fulfilled", "cancelled"):
        raise _Ignore(f"request already {req.status}")
    for name in ("title", "category", "details", "urgency", "needed_by", "area"):
        value = getattr(body, name)
        if value is not None:
            setattr(req, name, value)


@_apply.register
def _(body: k.RequestCancelled, req: RequestState, ev: EventView) -> None:
    if req.status in ("fulfilled", "cancelled"):
        raise _Ignore(f"request already {req.status}")
    req.status, req.closed_ts, req.cancel_reason = "cancelled", ev.ts, body.reason
    _close_pending(req, ev.ts)


@_apply.register
def _(body: k.RequestFulfilled, req: RequestState, ev: EventView) -> None:
    if req.status in ("fulfilled", "cancelled"):
        raise _Ignore(f"request already {req.status}")
    req.status, req.closed_ts = "fulfilled", ev.ts
    req.fulfilments.append(FulfilmentState(ev.id, req.id, ev.pod, body.note, body.hours, ev.ts))
    _close_pending(req, ev.ts)


@_apply.register
def _(body: k.ClaimMade, req: RequestState, ev: EventView) -> None:
    claim = ClaimState(ev.id, req.id, ev.pod, ev.author, ev.lane, body.by_member, body.note, ev.ts)
    req.claims[ev.id] = claim
    decided = req.decisions.pop(ev.id, None)
    if decided is not None:  # answered (naming this request) before it came, in order
        status, ts, reason = decided
        if status == "declined" or req.accepted_claim == ev.id:
            claim.status, claim.decided_ts = status, ts  # type: ignore[assignment]
            claim.reason = reason
            return
    if req.status in ("fulfilled", "cancelled"):
        claim.status, claim.decided_ts = "closed", ev.ts
    elif ev.pod == req.pod and req.status == "open":
        _accept(req, claim, ev.ts)  # the pod's own organizer: accepted at once


@_apply.register
def _(body: k.ClaimAccepted, req: RequestState, ev: EventView) -> None:
    claim = req.claims.get(ev.refs[0])
    if claim is None:
        raise _Ignore("claim not known")
    if claim.status != "pending":
        raise _Ignore(f"claim already {claim.status}")
    if req.status != "open":
        raise _Ignore(f"request already {req.status}")  # no double match, ever
    _accept(req, claim, ev.ts)


@_apply.register
def _(body: k.ClaimDeclined, req: RequestState, ev: EventView) -> None:
    claim = req.claims.get(ev.refs[0])
    if claim is None:
        raise _Ignore("claim not known")
    if claim.status not in ("pending", "accepted") or req.status in ("fulfilled", "cancelled"):
        raise _Ignore(f"claim already {claim.status}")
    if claim.status == "accepted":  # the helper fell through: the need is open again
        req.status, req.accepted_claim = "open", None
    claim.status, claim.decided_ts, claim.reason = "declined", ev.ts, body.reason


def _answer(req: RequestState, ev: EventView) -> None:
    """An answer that names its request (refs [claim, request]): it changes the request
    whether or not this node holds the claim. A claim may travel where the request's
    other readers cannot follow (a peers-lane claim reaches its own pod's peers, which
    are not the request pod's); its answer, in the request's lane, reaches them all, so
    every reader of the request sees it accepted, or open again."""
    claim_id = ev.refs[0]
    claim = req.claims.get(claim_id)
    if ev.kind == "claim.accept":
        if req.status != "open":
            raise _Ignore(f"request already {req.status}")  # no double match, ever
        req.status, req.accepted_claim = "accepted", claim_id
        decision = "accepted"
    else:
        if req.status in ("fulfilled", "cancelled"):
            raise _Ignore(f"request already {req.status}")
        if req.status == "accepted" and req.accepted_claim == claim_id:
            req.status, req.accepted_claim = "open", None  # the helper fell through
        decision = "declined"
    reason = ev.body.reason if isinstance(ev.body, k.ClaimDeclined) else ""
    if claim is None:
        req.decisions[claim_id] = (decision, ev.ts, reason)
    elif decision == "accepted" or claim.status in ("pending", "accepted"):
        claim.status, claim.decided_ts = decision, ev.ts  # type: ignore[assignment]
        claim.reason = reason


def _accept(req: RequestState, claim: ClaimState, ts: int) -> None:
    claim.status, claim.decided_ts = "accepted", ts
    req.status, req.accepted_claim = "accepted", claim.id


def _close_pending(req: RequestState, ts: int) -> None:
    for claim in req.claims.values():
        if claim.status == "pending":
            claim.status, claim.decided_ts = "closed", ts


def fold_request(
    root: bytes, events: list[EventView], roster: Roster, *, history: bool = True
) -> RequestState | None:
    """A request, its claims, fulfilment and history; None until its opening event is here.

    Only the request's own pod changes it (update, cancel, fulfil, accept, decline); any
    pod may claim it. Conflicts resolve by (ts, id): the first accept wins, later ones are
    ignored, so one need is never matched twice.
    """
    fold = RequestFold.start(root, events, roster, history=history)
    return None if fold is None else fold.req


@dataclass(slots=True)
class RequestFold:
    """A request folded so far, which later events (in (ts, id) order) can continue.

    ``extend`` with events that all sort after ``last`` gives the state ``start`` would
    give for all of them, unless ``can_extend`` says no: a claim that an earlier answer
    named (then ignored, its claim unknown) would have made that answer count."""

    req: RequestState
    history: bool
    last: tuple[int, bytes]  # (ts, id) of the last event folded
    claim_ids: set[bytes]  # every claim.make among the events
    # Answers naming only their claim, waiting for it (it sorts later); and the claims
    # named by answers that were ignored because no such claim was among the events.
    answers: dict[bytes, list[tuple[EventView, Step]]]
    orphans: set[bytes]

    @classmethod
    def start(
        cls, root: bytes, events: list[EventView], roster: Roster, *, history: bool = True
    ) -> RequestFold | None:
        ordered = sort_events(events)
        opening = next(
            (
                e
                for e in ordered
                if e.id == root and isinstance(e.body, k.RequestOpened)
                and roster.authorised(e.pod, e.author, e.ts)
            ),
            None,
        )
        if opening is None:
            return None
        body = opening.body
        assert isinstance(body, k.RequestOpened)
        req = RequestState(
            id=root, pod=opening.pod, author=opening.author, lane=opening.lane,
            title=body.title, details=body.details, category=body.category,
            urgency=body.urgency, needed_by=body.needed_by, area=body.area,
            for_member=body.for_member, opened_ts=opening.ts, updated_ts=opening.ts,
        )  # fmt: skip
        claim_ids = {e.id for e in ordered if e.kind == "claim.make"}
        fold = cls(req, history, (opening.ts, opening.id), claim_ids, {}, set())
        fold._fold(ordered, roster, opening)
        return fold

    def can_extend(self, events: list[EventView]) -> bool:
        """Whether ``extend`` with ``events`` gives what a fold from the start would."""
        return all(
            (e.ts, e.id) > self.last and not (e.kind == "claim.make" and e.id in self.orphans)
            for e in events
        )

    def extend(self, events: list[EventView], roster: Roster) -> None:
        """Fold later events onto the state (see ``can_extend``)."""
        ordered = sort_events(events)
        self.claim_ids.update(e.id for e in ordered if e.kind == "claim.make")
        self._fold(ordered, roster, None)

    def _fold(
        self, ordered: list[EventView], roster: Roster, opening: EventView | None
    ) -> None:
        req, answers = self.req, self.answers
        # An answer naming its request changes it at its own place in the order
        # (_answer). One naming only its claim (an older writer's) is applied after that
        # claim even if stamped before it: a claim from a pod whose clock runs ahead (by
        # less than the acceptance limit, more than what clocks follow) must still be
        # acceptable by its owner, whose answer is stamped on a slower clock. Still a
        # function of the set.
        for ev in ordered:
            step = Step(ev.id, ev.kind, ev.pod, ev.author, ev.ts, "applied")
            if self.history:
                req.history.append(step)
            if ev is opening:
                continue
            if not roster.authorised(ev.pod, ev.author, ev.ts):
                step.outcome, step.why = "soft-failed", "author not on its pod's roster then"
                continue
            if ev.body is None:
                step.outcome, step.why = "ignored", "body dropped or kind unknown"
                continue
            if ev.kind != "claim.make" and ev.pod != req.pod:
                step.outcome, step.why = "ignored", "only the request's own pod may do this"
                continue
            if (ev.pod == req.pod or ev.kind == "claim.make") and narrower(ev, req.lane):
                # A claim too: help offered where some of the request's readers cannot see
                # it is not counted, so no pod accepts an offer the others never heard of.
                step.outcome = "ignored"
                step.why = f"shared less widely than the request ({req.lane})"
                continue
            if ev.kind in CLAIM_ANSWERS and ev.refs[1:2] == (req.id,):  # names its request
                try:
                    _answer(req, ev)
                except _Ignore as why:
                    step.outcome, step.why = "ignored", str(why)
                else:
                    req.updated_ts = max(req.updated_ts, ev.ts)
                continue
            if ev.kind in CLAIM_ANSWERS and ev.refs and ev.refs[0] not in req.claims:
                if ev.refs[0] in self.claim_ids:  # its claim sorts later: apply it after that
                    answers.setdefault(ev.refs[0], []).append((ev, step))
                    continue
                self.orphans.add(ev.refs[0])  # ignored below: "claim not known"
            if _step(req, ev, step) and ev.id in answers:
                for answer, answer_step in answers.pop(ev.id):
                    _step(req, answer, answer_step)
        for waited in answers.values():  # their claims never counted (soft-failed, dropped)
            for _, step in waited:
                step.outcome, step.why = "ignored", "claim not known"
        if ordered:
            self.last = max(self.last, (ordered[-1].ts, ordered[-1].id))


def _step(req: RequestState, ev: EventView, step: Step) -> bool:
    """Apply one event to a request; False (and why, on its step) if it is ignored."""
    try:
        _apply(ev.body, req, ev)
    except _Ignore as why:
        step.outcome, step.why = "ignored", str(why)
        return False
    req.updated_ts = max(req.updated_ts, ev.ts)
    return True


# -------------------------------------------------------------------------------- offers


@dataclass
class OfferState:
    id: bytes
    pod: bytes
    author: bytes
    lane: str
    title: str
    category: str
    details: str
    by_member: bytes | None
    availability: str
    capacity: int | None
    opened_ts: int
    status: Literal["open", "withdrawn"] = "open"
    closed_ts: int | None = None


def fold_offer(root: bytes, events: list[EventView], roster: Roster) -> OfferState | None:
    """An offer, open until its own pod withdraws it."""
    state: OfferState | None = None
    for ev in sort_events(events):
        body = ev.body
        if not roster.authorised(ev.pod, ev.author, ev.ts):
            continue
        if isinstance(body, k.OfferOpened) and ev.id == root:
            state = OfferState(
                root, ev.pod, ev.author, ev.lane, body.title, body.category, body.details,
                body.by_member, body.availability, body.capacity, ev.ts,
            )  # fmt: skip
        elif (
            isinstance(body, k.OfferWithdrawn)
            and state is not None
            and ev.pod == state.pod
            and state.status == "open"
            and not narrower(ev, state.lane)
        ):
            state.status, state.closed_ts = "withdrawn", ev.ts
    return state


# -------------------------------------------------------------------------------- members


@dataclass
class MemberState:
    id: bytes
    pod: bytes
    joined_ts: int
    updated_ts: int
    box: bytes | None
    status: Literal["active", "forgotten"] = "active"


def fold_member(root: bytes, events: list[EventView], roster: Roster) -> MemberState | None:
    """A member's latest sealed details; a forget wipes them whatever the order."""
    state: MemberState | None = None
    forgotten_ts: int | None = None
    for ev in sort_events(events):
        if not roster.authorised(ev.pod, ev.author, ev.ts):
            continue
        if ev.kind == "member.join" and ev.id == root:
            box = ev.body.box if isinstance(ev.body, k.MemberJoined) else None
            state = MemberState(root, ev.pod, ev.ts, ev.ts, box)
        elif ev.kind == "member.forget" and forgotten_ts is None:
            forgotten_ts = ev.ts
        elif isinstance(ev.body, k.MemberUpdated) and state is not None and ev.pod == state.pod:
            state.box, state.updated_ts = ev.body.box, ev.ts
    if state is not None and forgotten_ts is not None:
        state.status, state.box, state.updated_ts = "forgotten", None, forgotten_ts
    return state


# -------------------------------------------------------------------------------- resources


@dataclass
class ResourceState:
    id: bytes
    pod: bytes
    lane: str
    name: str
    category: str
    what: str
    where: str
    when: str
    contact: str
    ts: int


def fold_resource(root: bytes, events: list[EventView], roster: Roster) -> ResourceState | None:
    """A resource entry, until its own pod withdraws it (as widely as it shared it: the
    rule of offers); then no entry at all."""
    state: ResourceState | None = None
    for ev in sort_events(events):
        body = ev.body
        if not roster.authorised(ev.pod, ev.author, ev.ts):
            continue
        if ev.id == root and isinstance(body, k.ResourceShared):
            state = ResourceState(
                root, ev.pod, ev.lane, body.name, body.category, body.what, body.where,
                body.when, body.contact, ev.ts,
            )  # fmt: skip
        elif (
            isinstance(body, k.ResourceWithdrawn)
            and state is not None
            and ev.pod == state.pod
            and not narrower(ev, state.lane)
        ):
            return None
    return state


# -------------------------------------------------------------------------------- roots

#: Kinds whose aggregate is the event itself.
ANCHORS = frozenset({"request.open", "offer.open", "member.join", "resource.share"})
#: Kinds whose aggregate is the event in refs[0].
FOLLOWERS = frozenset({
    "request.update", "request.cancel", "request.fulfil", "claim.make",
    "offer.withdraw", "member.update", "member.forget", "resource.withdraw",
})  # fmt: skip
#: Kinds that answer a claim: their aggregate is the claim's request.
CLAIM_ANSWERS = frozenset({"claim.accept", "claim.decline"})
#: The only kinds whose refs a fold reads (an answer names its claim); views of others
#: loaded from the table may leave refs empty.
REFS_READ = CLAIM_ANSWERS
POD_KINDS = frozenset({"pod.genesis", "pod.info", "roster.add", "roster.remove"})
ROSTER_KINDS = frozenset({"roster.add", "roster.remove"})


def root_of(kind: str, event_id: bytes, pod: bytes, refs: tuple[bytes, ...]) -> bytes | None:
    """The aggregate an event belongs to, as far as the event alone tells.

    A claim's answer names the claim, and (as podlink writes it) the request as refs[1]: then
    it belongs to the request directly. An answer naming only its claim is re-homed to
    the claim's request once the claim is known (claims and answers travel in different
    feeds), and where the claim never comes it belongs to nothing."""
    if kind in ANCHORS:
        return event_id
    if kind in CLAIM_ANSWERS and len(refs) > 1:
        return refs[1]
    if kind in FOLLOWERS or kind in CLAIM_ANSWERS:
        return refs[0] if refs else None
    if kind in POD_KINDS:
        return pod
    return None
