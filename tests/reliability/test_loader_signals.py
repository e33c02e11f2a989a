"""Stop signals sent to the whole process group (Ctrl-C in a terminal, SLURM, systemd) while an image folder is
decoded by loader workers: the workers ignore them, the main process owns the stop.

A small script (written to tmp) iterates a :class:`vicreg.data.FolderLoader` with two workers in a loop; its
SIGINT/SIGTERM handler (installed after the workers started, so they do not inherit it) only records the stop and
calls ``loader.request_stop()``. After the group is signalled it reads
more batches than the workers had prefetched (so they decoded after the signal), closes the loader, prints one
line and exits 0: no worker died, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import subprocess_env

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(180)]

SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from vicreg.data import folder_loader

    loader = folder_loader(sys.argv[1], 16, 4, num_workers=2, prefetch_factor=2, pin_memory=False)
    stop = []

    def on_stop(signum, frame):
        stop.append(signum)
        loader.request_stop()

    after, epoch, ready = 0, 0, False
    while True:
        loader.set_epoch(epoch)
        for images, _ in loader:
            if stop:
                after += 1
            elif not ready:
                # Installed once the workers run, so they cannot inherit it: they must ignore the signal
                # by themselves (the trainer's handler may come before or after its workers start).
                signal.signal(signal.SIGINT, on_stop)
                signal.signal(signal.SIGTERM, on_stop)
                print("ready", flush=True)
                ready = True
            if after >= 12:  # more than the 2 workers x 2 batches prefetched before the signal
                break
        epoch += 1
        if after >= 12:
            break
    loader.close()
    print(f"stopping: signal {stop[0]} received; read {after} batches after it", flush=True)
    """
)


def _png_folder(root: Path, n: int = 24) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_workers_survive_a_stop_signal_sent_to_the_process_group(tmp_path: Path, sig: signal.Signals) -> None:
    folder = _png_folder(tmp_path / "images")
    script = tmp_path / "loop.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,  # its own process group, as a terminal or a batch job gives it
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "ready", first
        time.sleep(0.2)  # the workers are past their start
        os.killpg(proc.pid, sig)  # the whole group: the main process and both workers
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert f"stopping: signal {int(sig)} received; read 12 batches after it" in out
    assert "Traceback" not in err and "exited unexpectedly" not in err, err
