"""What a user writes, checked by ``mypy --strict`` against the installed wheel (see .ci/run).

Every annotation below must hold without ``Any``: if the wheel lost its ``py.typed`` marker,
mypy would report the import as untyped and the step would fail. The script also runs, against
the bundled fake server, so the installed wheel is exercised at run time too.
"""

from __future__ import annotations

import asyncio

from venice_audio_async import (
    AsyncSession,
    AudioResult,
    BatchOutcome,
    Failed,
    Job,
    Outcome,
    QueueOptions,
    QueueRequest,
    RequestValidationError,
    SessionStatistics,
    Succeeded,
    VeniceAudio,
    VeniceError,
)
from venice_audio_async.testing import FakeServer, JobScript, ScaledClock

TIME_SCALE = 0.001  # one virtual second lasts a real millisecond


async def main() -> None:
    """Generate, submit, submit many and read results, as a user of the package would."""
    async with FakeServer(time_scale=TIME_SCALE, job_script=JobScript(duration=5.0)) as server:
        url: str = server.url
        async with AsyncSession(
            api_key="user-script-key", base_url=url, clock=ScaledClock(TIME_SCALE)
        ) as session:
            audio: AudioResult = await session.generate(
                "stable-audio-25", "a short test tune", duration_seconds=10, timeout=600.0
            )
            size: int = audio.size
            assert size > 0

            options: QueueOptions = {"duration_seconds": 10, "force_instrumental": None}
            job: Job = await session.submit("stable-audio-25", "rain on leaves", **options)
            requests: list[QueueRequest] = [
                QueueRequest(
                    model="stable-audio-25", prompt=f"church bells, take {i}", duration_seconds=5
                )
                for i in range(3)
            ]
            jobs: list[Job] = await session.submit_many(requests)

            finished: list[str] = []
            async with session.results([job, *jobs]) as results:
                async for outcome in results:
                    checked: Outcome = outcome
                    if isinstance(checked, Succeeded):
                        finished.append(checked.job.queue_id)
                    elif isinstance(checked, Failed):
                        error: VeniceError = checked.error
                        raise error
            assert len(finished) == 4

            try:
                await session.submit("stable-audio-25", "too long", duration_seconds=100_000)
            except RequestValidationError as refused:
                problems: int = len(refused.problems)
                assert problems >= 1
            else:
                raise AssertionError("an invalid request was accepted")

            stats: SessionStatistics = session.statistics()
            in_flight: int = stats.jobs_in_flight
            assert in_flight == 0
        # The synchronous client blocks its thread: off this loop, which serves the fake.
        await asyncio.to_thread(without_async, url)
    print("user script: ok")


def without_async(url: str) -> None:
    """The synchronous client, as a plain script or a thread pool uses it."""
    with VeniceAudio(
        api_key="user-script-key", base_url=url, clock=ScaledClock(TIME_SCALE)
    ) as client:
        audio: AudioResult = client.generate(
            "stable-audio-25", "a tune without async", duration_seconds=10, timeout=600.0
        )
        assert audio.size > 0
        job: Job = client.submit("stable-audio-25", "rain without async", duration_seconds=5)
        with client.results([job]) as outcomes:
            for outcome in outcomes:
                checked: Outcome = outcome
                assert isinstance(checked, Succeeded)
        requests = [
            QueueRequest(model="stable-audio-25", prompt=f"bells without async {i}")
            for i in range(2)
        ]
        kinds: list[str] = []
        with client.generate_many(requests) as results:
            for batch_outcome in results:
                seen: BatchOutcome = batch_outcome
                kinds.append(type(seen).__name__)
        assert kinds == ["Succeeded", "Succeeded"]
        stats: SessionStatistics = client.statistics()
        assert stats.jobs_succeeded == 4


if __name__ == "__main__":
    asyncio.run(main())
