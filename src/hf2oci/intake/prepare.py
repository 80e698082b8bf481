"""The optional ``get_hf/prepare.sh`` hook: reshapes a snapshot before it is packed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hf2oci.errors import PrepareError
from hf2oci.intake.hub import RepoState

#: the hook gets this long before it is stopped
TIMEOUT_S = 6 * 3600
#: what the hook gets of this process's environment; never a secret (HF_TOKEN, registry
#: credentials): the files are already downloaded, and a hook is code from the repository
PASSED_ON = ("PATH", "HOME", "HF_ENDPOINT", "LANG", "LC_ALL", "TMPDIR")


def run_prepare(script: Path, *, state: RepoState, src_dir: Path, out_dir: Path) -> None:
    """Run ``script`` once for a repo; OUT_DIR starts as a copy of the snapshot.

    The hook may add, change or delete files in OUT_DIR; what is left there goes under /REPO.
    A non-zero exit fails this repo only.
    """
    script = script.resolve()
    shutil.copytree(src_dir, out_dir, symlinks=False, dirs_exist_ok=True)
    env = {
        **{k: os.environ[k] for k in PASSED_ON if k in os.environ},
        "REPO_ID": state.repo_id,
        "REPO_TYPE": state.repo_type,
        "REVISION": state.commit,
        "REPO_URL": state.url,
        "SRC_DIR": str(src_dir),
        "OUT_DIR": str(out_dir),
    }
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            env=env,
            cwd=out_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise PrepareError(f"{script.name} ran past {TIMEOUT_S}s for {state.repo_id}") from e
    except OSError as e:
        raise PrepareError(f"cannot run {script}: {e.strerror}") from e
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        detail = f": {tail[-1]}" if tail else ""
        raise PrepareError(f"{script.name} exited {proc.returncode} for {state.repo_id}{detail}")
