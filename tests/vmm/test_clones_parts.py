"""The pieces that make clones distinct, checked on the host: the entropy helper is a real
program that reseeds a real kernel, and the guest script carries what it should."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vers.vmm.fresh import ENTROPY_BYTES, entropy_helper, entropy_input, fresh_script


def test_entropy_helper_credits_and_reseeds_the_running_kernel(tmp_path: Path) -> None:
    """Run on this host's kernel (same ioctls as the guest's): 0 on /dev/urandom as root, ENOTTY
    on anything that is not the random device."""
    if os.geteuid() != 0:
        pytest.skip("RNDADDENTROPY needs root")
    helper = tmp_path / "reseed"
    helper.write_bytes(entropy_helper())
    helper.chmod(0o755)
    data = entropy_input(os.urandom(ENTROPY_BYTES))
    with open("/dev/urandom", "wb") as out:
        assert subprocess.run([str(helper)], input=data, stdout=out, check=False).returncode == 0
    with open(os.devnull, "wb") as out:
        rc = subprocess.run([str(helper)], input=data, stdout=out, check=False).returncode
        assert rc == 25  # ENOTTY


def test_fresh_script_steps_and_generation() -> None:
    first = fresh_script("abcd1234", first=True)
    again = fresh_script("abcd1234", first=False)
    assert "date -s @" in first and "/run/vers/reseed" in first and "n=0\n" in first
    assert "read -r _ n < /run/vers/generation" in again
    assert 'echo "abcd1234 $n" > /run/vers/generation.new' in again
    # fresh host bytes every time
    assert fresh_script("x", True).splitlines()[3] != fresh_script("x", True).splitlines()[3]
