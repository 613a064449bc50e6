"""Where `vigil up` spends the webhook's time: py-spy samples it while wrk posts new alerts.

    python -m bench.profile_webhook [--alerts 1 100] [--seconds 8] [--out DIR]

Only the thread holding the GIL is sampled (py-spy --gil): the receiver, nats-py and the
projector share one interpreter, so GIL time is what bounds them. Writes collapsed stacks per
payload size (speedscope.app opens them) and prints the functions with the most samples,
their own and inclusive. Sampling slows the server: take figures from bench.webhook, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.loadgen import LoadgenError, run_wrk, wrk_binary
from bench.servers import ServerError, vigil_up

TOKEN = "profile-token"
SITE_PACKAGES = re.compile(r" \(/\S*site-packages/")
LINE = re.compile(r":\d+\)$")
LOOP_FRAME = "Runner.run (asyncio/runners.py"


def py_spy_binary() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("py-spy not found: pip install py-spy to profile")
    return found


async def profile(sizes: list[int], seconds: float, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with vigil_up(Path(tmp) / "vigil", TOKEN) as vigil:
            for size in sizes:
                await run_wrk(vigil.url, alerts=size, token=TOKEN, run_id=2 * size, seconds=2)
                stacks = out / f"webhook-{size}-alerts.txt"
                spy = await asyncio.create_subprocess_exec(
                    py_spy_binary(), "record", "--gil", "-r", "200", "-d", f"{seconds:g}",
                    "-p", str(vigil.pid), "-f", "raw", "-o", str(stacks),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                run = await run_wrk(
                    vigil.url, alerts=size, token=TOKEN, run_id=2 * size + 1, seconds=seconds
                )
                _, err = await spy.communicate()
                if spy.returncode != 0:
                    sys.exit(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
                print(f"\n{size} alerts a request: {run.req_s:,.0f} req/s while sampled; {stacks}")
                print_hotspots(stacks)


def print_hotspots(stacks: Path, top: int = 25) -> None:
    """The collapsed stacks summed per function: share of GIL samples, own and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [LINE.sub(")", SITE_PACKAGES.sub(" (", f)) for f in stack.split(";")[1:]]
        # What runs under the event loop, not the CLI frames above it that every sample has.
        loop = next((i for i, f in enumerate(frames) if f.startswith(LOOP_FRAME)), None)
        if loop is not None:
            frames = frames[loop + 1 :] or ["(the event loop itself: uvloop, in C)"]
        n = int(count)
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"  -- {title}")
        for frame, n in counter.most_common(top):
            print(f"  {n / total:6.1%}  {frame}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vigil-profiles")
    args = parser.parse_args()
    try:
        wrk_binary()
        args.out.mkdir(parents=True, exist_ok=True)
        asyncio.run(profile(args.alerts, args.seconds, args.out))
    except (LoadgenError, ServerError) as exc:
        sys.exit(str(exc))
