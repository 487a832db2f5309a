"""An in-process fake of Venice's asynchronous audio API, served over real HTTP by aiohttp.

:class:`FakeServer` implements ``GET /models``, ``POST /audio/{quote,queue,retrieve,complete}``
and ``GET /api_keys/rate_limits`` under ``/api/v1`` following the API reference, keeps every
job's state, records every request, and lets a test script job timelines (:class:`JobScript`)
and inject faults (:class:`Fault`). All times are *virtual* seconds of :attr:`FakeServer.clock`
(a :class:`~._core.clock.ScaledClock`), and every number on the wire is virtual too: a "60 s"
job at ``time_scale=0.001`` finishes after 60 real milliseconds but still reports
``average_execution_time`` in the tens of thousands of milliseconds.

This module is the facade: configuration, lifecycle, scripting and inspection. The request
pipeline is in :mod:`._pipeline`, the endpoints in :mod:`._endpoints`, the rate windows, error
budget and balance in :mod:`._limits`, the texts in :mod:`._messages` and the value types in
:mod:`._types` (re-exported here).

Assumptions where the API reference is silent or unsure, all deliberate:

* ``retrieve``/``complete`` naming a *different* model than the job's answer 400 "Request ID
  is invalid." (the id is not valid for that model). With ``api_keys`` configured, a job is
  also invisible (400) to other credentials, like "someone else's queue_id".
* A ``SIGN-IN-WITH-X`` (or legacy ``X-Sign-In-With-X``) header is accepted with any non-empty
  value, even when ``api_keys`` is set: signatures are not checked. It wins over a Bearer key.
* ``complete`` on a failed job answers ``{"success": true}`` (there is nothing to keep).
* ``delete_media_on_completion: true`` deletes the media as soon as the audio answer starts:
  if that download is then cut (a ``truncate`` fault or a network error), the media is gone
  and the next ``retrieve`` is a 404 -- a client must not rely on re-downloading.
* Failed jobs are refunded when they fail, i.e. at ``queued_at + duration``.
* Rate limits are for the whole server (not per key), sliding windows of 60 virtual
  seconds; rejected requests do not use up any window. A per-endpoint limit is stated in
  ``x-ratelimit-{limit,remaining,reset}-requests`` (reset: virtual epoch ms) on its answers
  unless ``state_limits`` leaves its endpoint out; the pooled limit (the "Audio: 60
  requests/min" reading of the docs) counts ``quote``, ``queue``, ``retrieve`` and
  ``complete`` together (not ``models`` nor ``api_keys/rate_limits``: they are not audio
  routes) and is never stated: its 429 carries only ``Retry-After``.
* The error budget counts answers that are not 2xx, except dropped connections, the
  lockout's own 429s (counting them would extend the lockout forever) and, unless
  ``error_budget_counts_429``, every other 429 too ([SKILL] leaves 429s out, [DOCS] counts
  every non-success status); the budget and the lockout are server wide. Lockout answers
  carry ``x-ratelimit-remaining: 0`` and ``x-ratelimit-resets`` (virtual epoch ms) and no
  ``Retry-After``, as [SKILL] describes.
* The three 429s differ only by their ``error`` text, as on the API (its bodies carry no
  ``code``): "Rate limit exceeded" (a rate limit, also the default of an injected 429), "The
  model is currently overloaded. Please try again later." (with ``Retry-After``) and "Too
  many failed attempts (> N) ..." (the lockout). An overloaded model's 429 answers a valid
  ``queue`` for it before it is billed; the request still counted in the rate windows.
* Requests an outside client spends (:meth:`FakeServer.spend`, ``outside_load``) fill the
  same windows as the client's own but are not recorded in :attr:`FakeServer.requests`; one
  refused is a 429 for the error budget (counted only with ``error_budget_counts_429``).
* ``GET /api_keys/rate_limits`` without credentials answers 401 (the spec lists 401, and
  x402 discovery is for paid routes); it lists the limits per model it was given (or, by
  default, every catalogue model at the pooled limit as RPM), served but not enforced.
* ``GET /models`` without ``type`` lists ``text`` models (Venice's default), so the fake
  returns an empty list: ask for ``type=music``.
* ``truncate`` and ``content_type`` faults only apply to an answer that carries audio; a
  ``retrieve`` of a job that is still running (or failed, or deleted) does not consume them.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from venice_audio_async._core.clock import Clock, ScaledClock, SystemClock

from ._catalogue import load_default_catalogue
from ._endpoints import ApiEndpoints, JobScripts
from ._faults import FaultBook
from ._limits import Balance, ErrorBudget, KeyRateLimits, Overloads, RequestLimits
from ._pipeline import API_PREFIX, RequestPipeline
from ._state import JobStore
from ._types import ENDPOINTS, MIN_AUDIO_SIZE, FakeJob, Fault, JobScript, RecordedRequest
from ._wire import MAX_BODY_BYTES

__all__ = [
    "ENDPOINTS",
    "MIN_AUDIO_SIZE",
    "FakeJob",
    "FakeServer",
    "Fault",
    "JobScript",
    "RecordedRequest",
]

#: ``x-venice-version`` sent on every response.
SERVER_VERSION = "20260420.0-fake"

_SHUTDOWN_TIMEOUT = 1.0  # real seconds aiohttp waits for in-flight handlers on close


class FakeServer:
    """A real HTTP server that behaves like Venice's audio queue API.

    Use it as an async context manager (or call :meth:`start` / :meth:`close`)::

        async with FakeServer(time_scale=0.001) as server:
            client = SomeClient(base_url=server.url, api_key="test")
            ...
            assert server.count("queue") == 1

    Args:
        catalogue: model rows to serve and validate against; ``None`` uses the bundled
            2026-04-20 catalogue (:func:`load_default_catalogue`).
        api_keys: accepted Bearer keys; ``None`` accepts any non-empty key.
        time_scale: real seconds per virtual second (0.001: a 60 s job takes 60 ms).
        job_script: timeline of each queued job (or a function of the queue body returning
            one) when :meth:`plan` has nothing queued; ``None`` means ``JobScript()``.
        rate_limits: requests per 60 virtual seconds per endpoint, e.g.
            ``{"queue": 40, "retrieve": 120}``; ``None`` means unlimited.
        pooled_rate_limit: requests per 60 virtual seconds over ``quote``, ``queue``,
            ``retrieve`` and ``complete`` together, enforced besides ``rate_limits``; its 429
            states no limit (only ``Retry-After``). ``None`` means no pooled limit.
        state_limits: whether answers state the per-endpoint limits in
            ``x-ratelimit-limit-requests`` / ``-remaining-requests`` / ``-reset-requests``
            (also the defaults an injected 429 carries); ``False`` hides them, leaving a
            limited client only ``Retry-After``; a collection of endpoint names (e.g.
            ``{"queue"}``) states them on those endpoints only.
        error_budget: ``(failures, window)``: more than ``failures`` non-2xx answers within
            ``window`` virtual seconds locks every endpoint into 429 for ``window`` seconds.
        error_budget_counts_429: whether rate-limit and injected 429s count as failures of
            the error budget (the lockout's own 429s never do).
        key_rate_limits: the limits ``GET /api_keys/rate_limits`` lists, by model id and type
            (``RPM``, ``RPD``, ``TPM``), e.g. ``{"elevenlabs-music": {"RPM": 60, "RPD": 500}}``;
            ``None`` lists every catalogue model at ``pooled_rate_limit`` RPM (nothing
            without one). Listed only, never enforced.
        overloaded_models: models whose ``queue`` answers the "model is currently
            overloaded" 429 for the server's whole life, each with the ``Retry-After`` its
            429s carry (virtual seconds, e.g. ``{"elevenlabs-music": 30.0}``); see
            :meth:`overload` for a while only.
        outside_load: requests per 60 virtual seconds an outside client on the same key
            spends, by endpoint (e.g. ``{"retrieve": 30}``), evenly spaced from the start;
            see :meth:`spend`.
        balance_usd: starting balance; ``queue`` debits the job's price and answers 402 when
            short; ``None`` means unlimited.
        host: interface to bind.
        port: TCP port (0 picks a free one).
        clock: use this clock instead of one derived from ``time_scale`` (for example a
            :class:`~._core.clock.ManualClock` to step job timelines by hand).
        audio: ``"bytes"`` (the default, for tests): each model's container, exactly
            ``JobScript.audio_size`` bytes of seeded filler behind valid headers.
            ``"tones"``: a playable 16-bit mono 16 kHz WAV sine tone as long as the request's
            ``duration_seconds`` (else the model's default, else 10 s), served as
            ``audio/wav`` whatever the model (what the command line's ``--fake`` uses).
        state_path: a JSON Lines file where every job is kept as it is queued and released;
            a server started later with the same file (in another process, after this one
            was killed) knows those jobs. ``None``: jobs live only as long as the server.
        accept_extra_fields: ``queue`` body fields the fake lets through unchecked, as the
            API would once it knows them (for requests with ``extra_body``). By default
            the fake is as strict as the API: an unknown field is a 400
            ``unrecognized_keys``.

    Raises:
        ValueError: invalid rate limits, key rate limits, error budget, balance, time scale,
            ``audio``, ``state_limits``, ``overloaded_models`` or ``outside_load``.

    .. versionadded:: 0.1.0
       ``pooled_rate_limit``, ``state_limits``, ``error_budget_counts_429``,
       ``key_rate_limits`` and ``GET /api_keys/rate_limits``; ``audio`` and ``state_path``.

    .. versionadded:: 0.1.0
       ``overloaded_models`` and :meth:`overload`, ``outside_load`` and :meth:`spend`,
       ``state_limits`` by endpoint, ``inject(..., during=...)``, :meth:`Fault.hang`,
       :meth:`Fault.drip` and ``Fault.drop(mid_body=True)``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
        api_keys: Collection[str] | None = None,
        time_scale: float = 1.0,
        job_script: JobScript | Callable[[Mapping[str, Any]], JobScript] | None = None,
        rate_limits: Mapping[str, int] | None = None,
        pooled_rate_limit: int | None = None,
        state_limits: bool | Collection[str] = True,
        error_budget: tuple[int, float] | None = None,
        error_budget_counts_429: bool = False,
        key_rate_limits: Mapping[str, Mapping[str, int]] | None = None,
        overloaded_models: Mapping[str, float] | None = None,
        outside_load: Mapping[str, float] | None = None,
        balance_usd: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        audio: Literal["bytes", "tones"] = "bytes",
        state_path: str | os.PathLike[str] | None = None,
        accept_extra_fields: Collection[str] = (),
    ) -> None:
        if isinstance(accept_extra_fields, str):
            raise TypeError("accept_extra_fields must be a collection of field names, not a str")
        if audio not in ("bytes", "tones"):
            raise ValueError(f"audio must be 'bytes' or 'tones', got {audio!r}")
        rows = load_default_catalogue() if catalogue is None else copy.deepcopy(list(catalogue))
        if clock is not None:
            self.clock: Clock = clock
        elif time_scale == 1.0:
            self.clock = SystemClock()
        else:
            self.clock = ScaledClock(time_scale)  # raises ValueError for a bad scale
        limits = RequestLimits(rate_limits, pooled=pooled_rate_limit, state=state_limits)
        budget = None
        if error_budget is not None:
            budget = ErrorBudget(*error_budget, counts_429=error_budget_counts_429)
        self._error_budget = budget
        if key_rate_limits is None:
            key_limits = KeyRateLimits.derived((str(row["id"]) for row in rows), pooled_rate_limit)
        else:
            key_limits = KeyRateLimits(key_rate_limits)
        self._overloads = Overloads()
        known = {str(row["id"]) for row in rows}
        for model, retry_after in (overloaded_models or {}).items():
            if model not in known:
                raise ValueError(f"overloaded_models: {model!r} is not in the catalogue")
            self._overloads.add(model, start=-math.inf, end=math.inf, retry_after=retry_after)
        self._outside_load = dict(outside_load or {})
        for endpoint, per_minute in self._outside_load.items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"unknown endpoint {endpoint!r} in outside_load")
            if not (math.isfinite(per_minute) and per_minute > 0):
                raise ValueError(
                    f"outside_load for {endpoint!r} must be a number > 0, got {per_minute!r}"
                )
        self._outside_tasks: list[asyncio.Task[None]] = []
        #: Requests an outside client spent (:meth:`spend`, ``outside_load``) by endpoint:
        #: ``admitted`` / ``refused`` counts, e.g. ``{"retrieve": {"admitted": 30,
        #: "refused": 0}}``.
        self.outside_spent: dict[str, dict[str, int]] = {}
        self._balance = Balance(balance_usd)
        self._host = host
        self._port = port

        #: Every request received, in arrival order.
        self.requests: list[RecordedRequest] = []
        #: Every job ever queued, by queue id (in queue order).
        self.jobs: dict[str, FakeJob] = {}
        self._scripts = JobScripts(job_script)
        self._faults = FaultBook(self.clock)
        self._counts: Counter[str] = Counter()
        keys = frozenset(api_keys) if api_keys is not None else None
        self._store = JobStore(state_path, self.clock) if state_path is not None else None
        self._endpoints = ApiEndpoints(
            catalogue=[dict(row) for row in rows],
            jobs=self.jobs,
            scripts=self._scripts,
            balance=self._balance,
            faults=self._faults,
            key_limits=key_limits,
            api_keys=keys,
            clock=self.clock,
            tones=audio == "tones",
            store=self._store,
            overloads=self._overloads,
            accept_extra_fields=accept_extra_fields,
        )
        self._pipeline = RequestPipeline(
            endpoints=self._endpoints,
            faults=self._faults,
            limits=limits,
            error_budget=budget,
            balance=self._balance,
            api_keys=keys,
            clock=self.clock,
            requests=self.requests,
            counts=self._counts,
        )
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start serving.

        With a ``state_path``, the jobs it holds are loaded first (before any request).

        Raises:
            RuntimeError: the server is already running.
            OSError: the address cannot be bound, or the state file cannot be used.
        """
        if self._runner is not None:
            raise RuntimeError("FakeServer is already running")
        if self._store is not None:
            for queue_id, job in self._store.load().items():
                self.jobs.setdefault(queue_id, job)
            self._store.open()
        self._pipeline.closing = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
        app.router.add_route("*", "/{tail:.*}", self._pipeline.handle)
        app.on_response_prepare.append(_add_version_header)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            if self._store is not None:
                self._store.close()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        for endpoint, per_minute in self._outside_load.items():
            task = asyncio.ensure_future(self._spend_steadily(endpoint, 60.0 / per_minute))
            self._outside_tasks.append(task)

    async def close(self) -> None:
        """Stop serving and release the socket (idempotent).

        In-flight ``delay`` faults are cut short; handlers still running after a second are
        cancelled.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        tasks, self._outside_tasks = self._outside_tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipeline.closing.set()
        await runner.cleanup()
        if self._store is not None:
            self._store.close()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: the server is not running.
        """
        if self._runner is None or self._bound_port is None:
            raise RuntimeError("FakeServer is not running; use 'async with' or start()")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:54321/api/v1``.

        Raises:
            RuntimeError: the server is not running.
        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    # -- scripting ---------------------------------------------------------------------

    def plan(self, *scripts: JobScript) -> None:
        """Queue timelines for the next jobs, first in first out (before ``job_script``)."""
        self._scripts.planned.extend(scripts)

    def inject(
        self,
        endpoint: str,
        fault: Fault,
        *,
        times: int | None = 1,
        queue_id: str | None = None,
        during: tuple[float, float] | None = None,
    ) -> None:
        """Make the next ``times`` requests to ``endpoint`` misbehave with ``fault``.

        With ``queue_id``, only requests whose body names that queue id count. With
        ``during=(start, end)`` (virtual seconds from now), only requests arriving in that
        window count, and ``times=None`` makes every one of them misbehave: for example
        ``inject("retrieve", Fault.drop(), times=None, queue_id=qid, during=(0, 120))`` drops
        every poll of one job for two minutes. Injections for one endpoint are used in the
        order they were made.

        Raises:
            ValueError: unknown endpoint, ``times < 1``, ``times=None`` without ``during``,
                ``during`` not ``(start >= 0, end > start)``, or an audio fault
                (``truncate``, ``content_type``) on an endpoint other than ``retrieve``.
        """
        self._faults.add(endpoint, fault, times=times, queue_id=queue_id, during=during)

    def overload(
        self,
        model: str,
        *,
        retry_after: float = 30.0,
        for_seconds: float | None = None,
        starting_in: float = 0.0,
    ) -> None:
        """Make ``model`` "currently overloaded": its ``queue`` calls answer 429
        ``{"error": "The model is currently overloaded. Please try again later."}`` with
        ``Retry-After: <retry_after>`` (30 s is typical of the API).

        Only ``queue`` of that model is refused (other models, and polls of its running jobs,
        are served); whether these 429s count toward the error budget follows
        ``error_budget_counts_429``. Times are virtual seconds: from ``starting_in`` from now,
        for ``for_seconds`` (``None``: until :meth:`recover`).

        Raises:
            ValueError: the model is not in the catalogue, ``retry_after`` is negative, or
                ``for_seconds`` / ``starting_in`` is not a number > 0 / >= 0.
        """
        if model not in self._endpoints.rows:
            raise ValueError(f"overload: {model!r} is not in the catalogue")
        if not (math.isfinite(starting_in) and starting_in >= 0):
            raise ValueError(f"starting_in must be >= 0, got {starting_in!r}")
        if for_seconds is not None and not (math.isfinite(for_seconds) and for_seconds > 0):
            raise ValueError(f"for_seconds must be > 0, got {for_seconds!r}")
        start = self.clock.monotonic() + starting_in
        end = math.inf if for_seconds is None else start + for_seconds
        self._overloads.add(model, start=start, end=end, retry_after=retry_after)

    def recover(self, model: str) -> None:
        """End every overload of ``model`` (scheduled ones too)."""
        self._overloads.clear(model)

    def spend(self, endpoint: str, count: int = 1) -> int:
        """Spend ``count`` requests of ``endpoint`` now, as an outside client on the same key.

        They fill the endpoint's window and the pooled one exactly like requests the client
        sends, but are not recorded in :attr:`requests`; a request the limits refuse is a
        429 to that outside client (a failure of the error budget with
        ``error_budget_counts_429``), and none is admitted during a lockout. For a steady
        outside client use ``outside_load``.

        Returns:
            How many of the ``count`` requests were admitted.

        Raises:
            ValueError: unknown endpoint or ``count < 0``.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        admitted = self._pipeline.spend(endpoint, count)
        tally = self.outside_spent.setdefault(endpoint, {"admitted": 0, "refused": 0})
        tally["admitted"] += admitted
        tally["refused"] += count - admitted
        return admitted

    async def _spend_steadily(self, endpoint: str, interval: float) -> None:
        """The ``outside_load`` client of one endpoint: one request every ``interval``."""
        due = self.clock.monotonic()
        while True:
            due += interval  # by the schedule, so that late wake-ups do not lower the rate
            await self.clock.sleep(due - self.clock.monotonic())
            self.spend(endpoint)

    def pending_faults(self, endpoint: str | None = None) -> int:
        """How many injected fault uses are left (for one endpoint or all)."""
        return self._faults.pending(endpoint)

    # -- inspection --------------------------------------------------------------------

    @property
    def lockouts(self) -> list[tuple[float, float]]:
        """Every error-budget lockout so far, ``(start, until)`` in virtual seconds."""
        return list(self._error_budget.lockouts) if self._error_budget is not None else []

    def count(self, endpoint: str) -> int:
        """Number of requests received by ``endpoint`` (``unknown`` for unrouted paths)."""
        return self._counts[endpoint]

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """The recorded requests of one endpoint, in arrival order."""
        return [record for record in self.requests if record.endpoint == endpoint]

    def queue_ids(self) -> list[str]:
        """Every queue id issued, in queue order."""
        return list(self.jobs)

    def finish_order(self) -> list[str]:
        """Queue ids ordered by the virtual time their jobs finish (ties: queue order)."""
        return sorted(self.jobs, key=lambda queue_id: self.jobs[queue_id].finishes_at)

    def peer_ports(self, endpoint: str | None = None) -> set[int]:
        """Client ports seen (for one endpoint or all): one per client connection used."""
        return {
            record.peer[1]
            for record in self.requests
            if record.peer is not None and (endpoint is None or record.endpoint == endpoint)
        }

    def audio_for(self, queue_id: str) -> bytes:
        """The exact audio bytes ``retrieve`` sends for a finished job.

        Raises:
            KeyError: no job has this id.
        """
        return b"".join(self.jobs[queue_id].audio_chunks())

    @property
    def balance_usd(self) -> float | None:
        """The balance left (after refunds of jobs failed by now); ``None`` if unlimited."""
        self._balance.settle(self.clock.monotonic())
        usd = self._balance.usd
        return None if usd is None else round(usd, 6)

    def model(self, model_id: str) -> dict[str, Any]:
        """The catalogue row the server uses for ``model_id``.

        Raises:
            KeyError: the model is not in the catalogue.
        """
        return self._endpoints.rows[model_id]

    @property
    def catalogue(self) -> list[dict[str, Any]]:
        """The model rows served by ``GET /models``."""
        return self._endpoints.catalogue

    def add_model(self, row: Mapping[str, Any]) -> None:
        """Serve one more catalogue row from now on and accept requests for its model, as
        when Venice releases a model while clients run (their catalogue read is older).

        Raises:
            ValueError: the catalogue already lists a model with this ``id``.
        """
        model_id = str(row["id"])
        if model_id in self._endpoints.rows:
            raise ValueError(f"the catalogue already lists {model_id!r}")
        added = copy.deepcopy(dict(row))
        self._endpoints.catalogue.append(added)
        self._endpoints.rows[model_id] = added


async def _add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-venice-version"] = SERVER_VERSION
