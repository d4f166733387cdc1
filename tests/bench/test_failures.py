"""``bench/failures.py`` end to end, small: rollouts through injected model failures (never
gated on time: only on the counts)."""

from __future__ import annotations

from support import run_bench


def test_failures_bench_completes_every_rollout_and_runs_no_call_twice() -> None:
    # 60% of the failing model's requests fail (half of them rate limited, a quarter each
    # server errors and dropped streams), fast, without spikes or stalls; with 30 attempts a
    # turn is lost with probability 0.6**30 (2e-7): the counts are certain, whatever the timing.
    overrides = {
        "rate_limit_probability": 0.3,
        "server_error_probability": 0.15,
        "drop_probability": 0.15,
        "ttft_s": 0.01,
        "spike_probability": 0,
        "stall_probability": 0,
    }
    done = run_bench(
        "failures.py",
        *("--rollouts", "3", "--turns", "3", "--concurrency", "3", "--seed", "4"),
        *("--max-attempts", "30", "--profile", "flaky", "--progress", "1"),
        *(arg for key, value in overrides.items() for arg in ("--latency", f"{key}={value}")),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3 rollouts per strategy, 3 turns each, profile flaky")
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert list(rows) == ["clean", "retry", "fallback"]
    for name, row in rows.items():
        done_, lost, failures, _, resent, fell_back, calls, runs, twice = row[1:10]
        assert (done_, lost, twice) == ("3", "0", "0"), name
        # Two tool turns of two calls each, every call executed exactly once.
        assert (calls, runs) == ("12", "12"), name
        if name == "clean":
            assert (failures, resent, fell_back) == ("0", "0", "0")
        else:
            assert int(failures) > 0 and int(resent) == int(failures), name
    assert "check: OK: 0 rollouts lost, 0 tool calls executed twice" in done.stdout
    assert "rollouts per strategy" in done.stderr  # progress
