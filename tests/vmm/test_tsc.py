"""The host's TSC rate that TCG guests are told at boot (their clock keeps time only with it:
tests/vmm/test_clones.py checks a guest's clock 10 s after a restore)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vers.vmm import tsc


def test_measured_rate_is_stable_and_plausible() -> None:
    a, b = tsc.measure_tsc_khz(), tsc.measure_tsc_khz()
    if a is None or b is None:
        pytest.skip("no x86 rdtsc from mapped memory here")
    assert 100_000 < a < 10_000_000
    assert abs(a - b) / a < 0.01


def test_rate_is_cached_per_boot_in_a_private_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tsc, "measure_tsc_khz", lambda samples=3: 2_345_678)
    assert tsc.host_tsc_khz(tmp_path) == 2_345_678
    cache = tmp_path / "host-tsc-khz"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    boot, khz = cache.read_text().split()
    assert boot == tsc._boot_id() and khz == "2345678"
    monkeypatch.setattr(tsc, "measure_tsc_khz", lambda samples=3: 1_111_111)
    assert tsc.host_tsc_khz(tmp_path) == 2_345_678  # this boot's: not measured again
    cache.write_text("another-boot 3000000\n")
    assert tsc.host_tsc_khz(tmp_path) == 1_111_111  # another boot's rate is not this one's


def test_without_a_measurement_cpuinfo_then_2_ghz(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tsc, "measure_tsc_khz", lambda samples=3: None)
    monkeypatch.setattr(tsc, "cpuinfo_khz", lambda: 2_500_000)
    assert tsc.host_tsc_khz(tmp_path) == 2_500_000
    assert not (tmp_path / "host-tsc-khz").exists()  # only a measurement is cached
    monkeypatch.setattr(tsc, "cpuinfo_khz", lambda: None)
    assert tsc.host_tsc_khz(tmp_path) == tsc.FALLBACK_KHZ
