"""Disk full in the middle of writing a checkpoint: the write fails with an error, the previous checkpoint at
that path stays intact and loadable, and no half-written directory is left behind to be promoted.

"Disk full" is simulated portably with RLIMIT_FSIZE in a child process (writes past the limit fail with EFBIG,
as they fail with ENOSPC on a full disk): no root, no mount needed.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from refseg_model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

CHILD = textwrap.dedent("""
    import resource, signal, sys
    from refseg_model.checkpoint import save_checkpoint
    from refseg_model.checkpoint import load_model
    model, _ = load_model("preset:tiny")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the EFBIG error instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # 64 KiB: the weights file is larger
    try:
        save_checkpoint(model, sys.argv[1], "v2")
    except BaseException as exc:
        print("FAILED:", type(exc).__name__, exc)
        sys.exit(3)
    print("SAVED")
""")


def test_checkpoint_write_fails_cleanly_when_the_disk_fills(tmp_path):
    from refseg_model.checkpoint import load_model

    model, _ = load_model("preset:tiny")
    target = tmp_path / "models" / "p1" / "current"
    save_checkpoint(model, target, "v1")

    r = subprocess.run([sys.executable, "-c", CHILD, str(target)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "FAILED" in r.stdout
    # the old version is untouched and loads
    assert read_checkpoint_meta(target)["version"] == "v1"
    load_checkpoint(target)
    # no temp or half-written directory next to it
    assert sorted(p.name for p in target.parent.iterdir()) == ["current"]
