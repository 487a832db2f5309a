"""``VeniceAudio``: the synchronous client, as openai's ``OpenAI`` is to ``AsyncOpenAI``.

It runs one :class:`~._session.session.AsyncSession` on an event loop in a daemon thread of its own
(an anyio blocking portal) and blocks the calling thread until each call is done. So it
works in a plain script, from many threads at once (one session, one connection pool and
one request budget for them all), and from a thread that already runs an event loop
(Jupyter): the session's loop is another thread, so nothing nests.

Every call runs in the loop under a cancel scope the client keeps: ``close()`` cancels the
calls still waiting (their threads get :class:`SessionStateError`), then closes the
session. Context managers (``generate_many``, ``results``) are entered and left by one task
of the loop that holds the async block open until the ``with`` ends, so leaving the
``with`` leaves the async block (nothing more is sent).

The loop's thread is a daemon and refers to no ``VeniceAudio``: a client never closed does
not keep the interpreter alive, and is closed when collected (with a ``ResourceWarning``)
or at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import sys
import threading
import types
import warnings
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._core.config import RetryPolicy
from ._core.errors import SessionStateError
from ._core.models import AudioModel, AudioResult, Job, QueueOptions, QueueRequest, QuoteResult
from ._core.outcomes import BatchOutcome, Outcome
from ._ledger.ledger import JournalSource
from ._polling.release import ReleaseMedia
from ._session.options import SessionOptions, check_options
from ._session.resume import ResumeReport
from ._session.session import AsyncSession
from ._session.statistics import SessionStatistics
from ._session.status import JobStatus
from ._session.submit import Destination

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

__all__ = ["VeniceAudio"]

log = logging.getLogger("venice_audio_async")

T = TypeVar("T")

#: Clients still open, closed at interpreter exit (their jobs' ids logged, the journal shut).
_OPEN: weakref.WeakSet[_Loop] = weakref.WeakSet()


class _Exhausted:
    """An async iterator's end, carried across the thread boundary."""


_END = _Exhausted()


def _serve(ready: concurrent.futures.Future[BlockingPortal]) -> None:
    """The loop thread: a blocking portal until it is stopped."""

    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(main, backend="asyncio")
    except BaseException as error:  # pragma: no cover - the loop could not start
        if not ready.done():
            ready.set_exception(error)


class _Loop:
    """The loop thread, its portal and the session in it. It refers to no ``VeniceAudio``,
    so a client nobody closed can still be collected."""

    def __init__(self, make_session: Callable[[], AsyncSession]) -> None:
        ready: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=_serve, args=(ready,), name="venice-audio-loop", daemon=True
        )
        self._thread.start()
        self._portal = ready.result()
        self._thread_id = self._thread.ident
        #: Set in the loop, first thing of closing; read by any thread.
        self.closed = False
        self._stopped = False
        self._close_lock = threading.Lock()
        self._scopes: set[anyio.CancelScope] = set()  # the calls running; loop thread only
        self._closing: asyncio.Task[None] | None = None  # close_soon's, when run in the loop
        try:
            self.session = self._portal.call(make_session)
        except BaseException:
            self.closed = True
            self._stop()
            raise
        _OPEN.add(self)

    # ------------------------------------------------------------------ calls

    def is_closed(self) -> bool:
        """Whether closing has begun (read again: another thread may have closed it)."""
        return self.closed

    def _in_loop(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _refuse_in_loop(self) -> None:
        if self._in_loop():
            raise RuntimeError(
                "VeniceAudio cannot wait on its own event loop (in a callback it runs, such "
                "as resume's on_job); only status, statistics, unfinished, finished and "
                "forget may be called there"
            )

    def _closed_error(self) -> SessionStateError:
        return SessionStateError("the client is closed; create a new one")

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` in the loop and wait for its result, raised as it is.

        Raises:
            SessionStateError: the client is closed, or was closed while the call waited.
        """
        if self.closed:
            raise self._closed_error()
        self._refuse_in_loop()
        try:
            return self._portal.call(self._guarded, fn)
        except (RuntimeError, concurrent.futures.CancelledError) as error:
            # The portal stopped between the check above and the call: closed meanwhile.
            if self.is_closed() and not isinstance(error, SessionStateError):
                raise self._closed_error() from None
            raise

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run the synchronous ``fn()`` in the loop (the session's state is the loop's)."""
        if self.closed:
            raise self._closed_error()
        if self._in_loop():
            return fn()
        try:
            return self._portal.call(fn)
        except RuntimeError:
            if self.closed:
                raise self._closed_error() from None
            raise

    async def _guarded(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` under a cancel scope ``close`` cancels: then SessionStateError."""
        if self.closed:
            raise self._closed_error()
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await fn()
            finally:
                self._scopes.discard(scope)
        raise SessionStateError("the client was closed while this call waited")

    @contextmanager
    def hold(self, enter: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
        """Enter the async context manager ``enter()`` in one task of the loop, which
        leaves it when the ``with`` ends (or the client closes)."""
        if self.closed:
            raise self._closed_error()
        self._refuse_in_loop()
        entered: concurrent.futures.Future[tuple[T, anyio.Event]] = concurrent.futures.Future()

        async def host() -> None:
            leave = anyio.Event()
            async with enter() as value:
                entered.set_result((value, leave))
                await leave.wait()

        try:
            done = self._portal.start_task_soon(self._guarded, host)
        except RuntimeError:
            if self.closed:
                raise self._closed_error() from None
            raise
        both: list[concurrent.futures.Future[Any]] = [entered, done]
        concurrent.futures.wait(both, return_when=concurrent.futures.FIRST_COMPLETED)
        if not entered.done():
            done.result()  # entering failed: its error
            raise self._closed_error()  # pragma: no cover - host ends only after entering
        value, leave = entered.result()
        try:
            yield value
        finally:
            if not self.closed:
                with contextlib.suppress(RuntimeError):  # closed meanwhile: closing left it
                    self._portal.call(leave.set)
            try:
                done.result()  # the async block has been left: nothing more is sent
            except (SessionStateError, concurrent.futures.CancelledError):
                if not self.closed:
                    raise

    def iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        """``source`` as a plain iterator: each step is a call in the loop."""

        async def step() -> T | _Exhausted:
            try:
                return await source.__anext__()
            except StopAsyncIteration:
                return _END

        while True:
            item = self.run(step)
            if isinstance(item, _Exhausted):
                return
            yield item

    # ------------------------------------------------------------------ closing

    async def _aclose(self) -> None:
        self.closed = True
        for scope in list(self._scopes):
            scope.cancel()
        await self.session.aclose()

    def close(self) -> None:
        """Cancel the calls waiting, close the session and stop the loop; idempotent."""
        with self._close_lock:
            if self._stopped:
                return
            self._refuse_in_loop()
            try:
                if not self.is_closed():  # else closing began in the loop (close_soon)
                    self._portal.call(self._aclose)
            finally:
                self._stop()  # waits for a close_soon under way to end

    def close_soon(self) -> None:
        """Close without waiting (from ``__del__``): the loop closes and stops itself."""
        if self.closed or self._stopped:
            return

        async def close_and_stop() -> None:
            try:
                await self._aclose()
            finally:
                await self._portal.stop()

        if self._in_loop():  # collected in the loop's thread: its last call just ended
            self._closing = asyncio.get_running_loop().create_task(close_and_stop())
            return
        with contextlib.suppress(RuntimeError):  # stopped meanwhile
            self._portal.start_task_soon(close_and_stop)

    def _stop(self) -> None:
        self._stopped = True
        _OPEN.discard(self)
        with contextlib.suppress(RuntimeError):  # stopped already
            self._portal.call(self._portal.stop)
        if not self._in_loop():
            self._thread.join()


@atexit.register
def _close_at_exit() -> None:
    """Close the clients still open: their unfinished jobs' ids are logged, the journal
    and the pool closed cleanly (the daemon thread would otherwise just stop)."""
    for loop in list(_OPEN):
        try:
            loop.close()
        except Exception as error:  # pragma: no cover - exiting anyway
            log.warning("could not close a VeniceAudio client at exit: %r", error)


class VeniceAudio:
    """The synchronous client: :class:`AsyncSession`'s calls, blocking, from any thread.

    ::

        with VeniceAudio() as client:  # key from VENICE_API_KEY
            audio = client.generate("stable-audio-25", "rain on a tin roof", duration_seconds=10)
            with client.generate_many(requests) as results:
                for outcome in results:  # in finish order
                    ...

    It runs one :class:`AsyncSession` (the same keyword arguments, the same defaults) on an
    event loop in a daemon thread of its own, so it works in a plain script, from many
    threads at once (one session, one request budget and one connection pool for all of
    them), and in a thread that already runs an event loop, such as a Jupyter cell. The
    calls raise the session's exceptions, as they are. A ``clock``, ``budget`` or
    ``http_session`` given must be usable from that loop (an ``aiohttp.ClientSession``
    made on another loop is not).

    Close it with ``with`` or :meth:`close`: calls still waiting in other threads then
    raise :class:`SessionStateError`, and so does every call after. A client never closed
    is closed when it is collected (with a ``ResourceWarning``) or at interpreter exit;
    its thread never keeps the interpreter alive.

    Args:
        api_key: The API key (default: ``VENICE_API_KEY``). Never shown in ``repr``,
            messages or logs. Without one, only ``models`` works.
        base_url: The API's base URL (default: ``VENICE_BASE_URL``, else
            ``https://api.venice.ai/api/v1``).
        timeouts: HTTP timeouts (:class:`Timeouts`; default ``Timeouts()``).
        retry: How failed requests are retried and when a job that gets no answer is
            given up on (:class:`RetryPolicy`; default ``RetryPolicy()``). Per job with
            :meth:`with_options`.
        rate_limits: The client-side request budget per endpoint (:class:`RateLimits`;
            default ``RateLimits()``: the pool over the audio endpoints learnt from the
            key at open, else 60 a minute; 40 queue and 120 retrieve a minute assumed).
        limits: Connections, concurrency and size caps (:class:`Limits`; default
            ``Limits()``).
        polling: Bounds of the poll policy (:class:`PollingBounds`; default
            ``PollingBounds()``).
        output_dir: A directory for finished audio, a file per job written atomically
            (default ``None``: audio stays in memory).
        release_media: When the server's copy of finished audio is released:
            ``"complete"`` (the default), ``"delete_on_retrieve"`` or ``"keep"``. Per job
            with :meth:`with_options`.
        validate: Check each request against the model's rules before sending it
            (default ``True``); each call may override it.
        catalogue: The models to use instead of fetching the catalogue (default
            ``None``: fetched once, on first need).
        http_session: Your own ``aiohttp.ClientSession`` to send through (default
            ``None``: the session owns its pool); it is left open on close.
        clock: The time source (a :class:`Clock`; default the system clock; tests pass
            a ``ManualClock`` or ``ScaledClock``).
        budget: A request budget to share (a :class:`RequestBudget`, such as
            ``RedisBudget``; default: one on ``VENICE_REDIS_URL`` when it is set, else the
            session's own from ``rate_limits``).
        allow_insecure_http: Allow a plain ``http://`` ``base_url`` on a remote host
            (default ``False``: only loopback may use plain http).
        journal: A job journal (a path or a :class:`Journal`; default ``None``): every
            paid job is recorded before it is sent, so ``resume`` can finish it.
        max_spend_usd: A spending limit in USD for the session (default ``None``: none);
            a job that would pass it is refused before it is sent.

    Raises:
        ValueError: invalid configuration (for example a plain-http remote ``base_url``).
        TypeError: an unknown keyword, or an option of the wrong type (naming the class
            it must be).
        ImportError: ``VENICE_REDIS_URL`` is set but the ``redis`` extra is missing.

    .. versionadded:: 0.1.0
    """

    def __init__(self, **options: Unpack[SessionOptions]) -> None:
        # AsyncSession's options, forwarded as given; the session is built in its loop's
        # thread (refused options raise here, and the thread ends).
        check_options("VeniceAudio", options)  # named as this class, before any thread
        self._loop = _Loop(lambda: AsyncSession(**options))

    def __repr__(self) -> str:
        state = "closed" if self._loop.closed else "open"
        session = repr(self._loop.session).removeprefix("<AsyncSession ")
        return f"<VeniceAudio {state}, session {session}"

    #: A view's session (``with_options``); ``None``: the client's own.
    _view: AsyncSession | None = None

    @property
    def _session(self) -> AsyncSession:
        return self._view if self._view is not None else self._loop.session

    def with_options(
        self,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        release_media: ReleaseMedia | None = None,
    ) -> VeniceAudio:
        """A view of this client with other per-call options (see
        :meth:`AsyncSession.with_options`): the same thread, session, pool and budget;
        ``timeout`` bounds each call that takes one, ``retry`` and ``release_media`` hold
        for the jobs submitted through the view. Closing either closes both; a view needs
        no closing of its own::

            patient = client.with_options(timeout=600)
            audio = patient.generate("stable-audio-25", "rain", duration_seconds=30)

        Raises:
            TypeError, ValueError: an option of the wrong type or value.
        """
        session = self._session
        made = self._loop.run_sync(
            lambda: session.with_options(timeout=timeout, retry=retry, release_media=release_media)
        )
        view = object.__new__(VeniceAudio)
        view._loop = self._loop
        view._view = made
        return view

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> VeniceAudio:
        if self._loop.closed:
            raise SessionStateError("the client is closed; create a new one")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client: calls still waiting in other threads raise
        :class:`SessionStateError`, the session closes (see :meth:`AsyncSession.aclose`:
        jobs still running stay billed and are logged) and the loop's thread ends.
        Closing twice is harmless; every call after raises :class:`SessionStateError`.
        """
        self._loop.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.closed and self._view is None:
            warnings.warn(
                f"{self!r} was never closed; use 'with VeniceAudio()' or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            loop.close_soon()

    # ------------------------------------------------------------------ catalogue and prices

    def models(self, *, refresh: bool = False) -> tuple[AudioModel, ...]:
        """The music catalogue, fetched once and cached; see :meth:`AsyncSession.models`."""
        return self._loop.run(lambda: self._session.models(refresh=refresh))

    def quote(
        self,
        model: str,
        *,
        duration_seconds: int | None = None,
        character_count: int | None = None,
        validate: bool | None = None,
    ) -> QuoteResult:
        """The price of a generation in USD; see :meth:`AsyncSession.quote`."""
        return self._loop.run(
            lambda: self._session.quote(
                model,
                duration_seconds=duration_seconds,
                character_count=character_count,
                validate=validate,
            )
        )

    def estimate_cost(
        self, request: QueueRequest, *, model: AudioModel | None = None
    ) -> float | None:
        """The estimated price of ``request`` in USD; see :meth:`AsyncSession.estimate_cost`."""
        return self._loop.run(lambda: self._session.estimate_cost(request, model=model))

    # ------------------------------------------------------------------ submit and wait

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        **options: Unpack[QueueOptions],
    ) -> AudioResult:
        """Submit one generation and wait for its audio; see :meth:`AsyncSession.generate`."""
        return self._loop.run(
            lambda: self._session.generate(
                model,
                prompt,
                timeout=timeout,
                destination=destination,
                deadline=deadline,
                validate=validate,
                **options,
            )
        )

    def submit(
        self,
        model: str,
        prompt: str,
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        **options: Unpack[QueueOptions],
    ) -> Job:
        """Validate, queue (billed here) and start polling one generation; returns the job
        at once. See :meth:`AsyncSession.submit`."""
        return self._loop.run(
            lambda: self._session.submit(
                model,
                prompt,
                destination=destination,
                deadline=deadline,
                validate=validate,
                **options,
            )
        )

    def submit_request(
        self,
        request: QueueRequest,
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        key: str | None = None,
        name: str | None = None,
    ) -> Job:
        """Like :meth:`submit`, from a prepared :class:`QueueRequest`."""
        return self._loop.run(
            lambda: self._session.submit_request(
                request,
                destination=destination,
                deadline=deadline,
                validate=validate,
                key=key,
                name=name,
            )
        )

    def submit_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
    ) -> list[Job]:
        """Validate every request, then queue them all; see :meth:`AsyncSession.submit_many`."""
        return self._loop.run(
            lambda: self._session.submit_many(
                requests, destination=destination, deadline=deadline, validate=validate
            )
        )

    def wait_for(self, job: Job, *, timeout: float | None = None) -> AudioResult:
        """The audio of one job, once it is finished; see :meth:`AsyncSession.wait_for`.

        Raises:
            SessionStateError: the client was closed (by another thread) meanwhile.
        """
        return self._loop.run(lambda: self._session.wait_for(job, timeout=timeout))

    def wait_outcome(self, job: Job, *, timeout: float | None = None) -> Outcome:
        """Like :meth:`wait_for`, returning the outcome instead of raising the job's error."""
        return self._loop.run(lambda: self._session.wait_outcome(job, timeout=timeout))

    def generate_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
    ) -> AbstractContextManager[Iterator[BatchOutcome]]:
        """Queue a batch and iterate over the outcomes as they finish::

            with client.generate_many(requests) as results:
                for outcome in results:  # Succeeded, Failed or Refused, in finish order
                    ...

        Leaving the ``with`` early sends none of the requests not queued yet; the queued
        ones stay tracked (:meth:`unfinished`). See :meth:`AsyncSession.generate_many`.
        """
        return self._iterated(
            lambda: self._session.generate_many(
                requests, destination=destination, deadline=deadline, validate=validate
            )
        )

    def results(self, jobs: Iterable[Job]) -> AbstractContextManager[Iterator[Outcome]]:
        """Iterate over the outcomes of ``jobs`` as they finish::

            with client.results(jobs) as results:
                for outcome in results:  # Succeeded or Failed, in finish order
                    ...

        Leaving early loses nothing; see :meth:`AsyncSession.results`.
        """
        given = list(jobs)
        return self._iterated(lambda: self._session.results(given))

    @contextmanager
    def _iterated(
        self, enter: Callable[[], AbstractAsyncContextManager[AsyncIterator[T]]]
    ) -> Iterator[Iterator[T]]:
        with self._loop.hold(enter) as source:
            yield self._loop.iterate(source)

    # ------------------------------------------------------------------ jobs

    def attach(
        self,
        model: str,
        queue_id: str,
        *,
        destination: Destination = None,
        deadline: float | None = None,
    ) -> Job:
        """Adopt a job queued elsewhere and poll it; see :meth:`AsyncSession.attach`.

        Unlike the session's, it works before the first call too (it starts the session).
        """
        session = self._session

        async def attach() -> Job:
            await session._start(paid=True)
            return session.attach(model, queue_id, destination=destination, deadline=deadline)

        return self._loop.run(attach)

    def forget(self, job: Job) -> None:
        """Stop tracking a job given up on; see :meth:`AsyncSession.forget`."""
        self._loop.run_sync(lambda: self._session.forget(job))

    def unfinished(self) -> list[Job]:
        """Jobs queued (and paid for) that have no outcome yet: keep their ids."""
        return self._loop.run_sync(self._session.unfinished)

    def finished(self) -> list[Job]:
        """Jobs whose outcome is ready but nobody has taken yet, oldest first."""
        return self._loop.run_sync(self._session.finished)

    def status(self, job: Job | QueueRequest) -> JobStatus:
        """The last known state of ``job``; sends nothing. See :meth:`AsyncSession.status`."""
        return self._loop.run_sync(lambda: self._session.status(job))

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of what the client has done, all threads together
        (see :class:`SessionStatistics`)."""
        return self._loop.run_sync(self._session.statistics)

    def spending(self) -> tuple[float, float | None]:
        """(estimated USD spent, the limit or ``None``)."""
        return self._loop.run_sync(self._session.spending)

    # ------------------------------------------------------------------ journal

    def journal_requests(
        self,
        requests: Sequence[QueueRequest],
        *,
        keys: Sequence[str | None] | None = None,
        names: Sequence[str | None] | None = None,
        destination: Destination = None,
        all_or_nothing: bool = True,
    ) -> float:
        """Record ``requests`` in the journal as jobs to send, sending none; see
        :meth:`AsyncSession.journal_requests`."""
        return self._loop.run(
            lambda: self._session.journal_requests(
                requests,
                keys=keys,
                names=names,
                destination=destination,
                all_or_nothing=all_or_nothing,
            )
        )

    def resume(
        self,
        journal: JournalSource | None = None,
        *,
        requeue_unknown: bool = False,
        on_job: Callable[[Job], object] | None = None,
    ) -> ResumeReport:
        """Pick up every unfinished job of the journal; see :meth:`AsyncSession.resume`.

        ``on_job`` runs in the client's own thread: it may call :meth:`status`,
        :meth:`statistics`, :meth:`unfinished`, :meth:`finished` and :meth:`forget`, not
        the calls that wait.
        """
        return self._loop.run(
            lambda: self._session.resume(journal, requeue_unknown=requeue_unknown, on_job=on_job)
        )
