"""Runs tests/fault_injection.py: SIGKILLs + resumes (2 resident, 1 streamed, one
of them during a save) are bitwise identical to an uninterrupted run; SIGTERM
exits 143 with a checkpoint at the step reached."""

import fault_injection


def test_sigkill_resume_is_bitwise_identical_and_sigterm_checkpoints(tmp_path):
    rows = fault_injection.run_faults(str(tmp_path), kills=2, seed=1)
    assert sum(r['fault'].startswith('SIGKILL') for r in rows) == 2
    assert rows[-2]['outcome'] == 'bitwise identical to the uninterrupted run'
    assert rows[-1]['outcome'].startswith('exit 143')


def test_streaming_sigkill_resume_is_bitwise_identical(tmp_path):
    """grain workers and step checkpoints: the saved data position resumes exactly."""
    rows = fault_injection.run_faults(str(tmp_path), kills=1, seed=2, input_kind='streaming')
    assert sum(r['fault'].startswith('SIGKILL') for r in rows) == 1
    assert rows[-2]['outcome'] == 'bitwise identical to the uninterrupted run'
    assert rows[-1]['outcome'].startswith('exit 143')
