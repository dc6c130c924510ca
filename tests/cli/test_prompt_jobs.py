"""latentgen.cli.batch: the jobs of ``--prompts FILE --seeds A-B``, every prompt with every seed, bounded before any
job is built. The command itself is tested whole in tests/test_batch.py."""

import pytest

from latentgen import batch
from latentgen.cli import batch as cli_batch


def test_prompts_and_seed_ranges(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red circle on a blue background\n\na white square on a black background\n")
    jobs = cli_batch.prompt_jobs(f, "2-4")
    assert jobs[3].where.endswith("p.txt:3 with seed 2")
    assert [(j.args["prompt"][:7], j.args["seed"]) for j in jobs] == [("a red c", 2), ("a red c", 3), ("a red c", 4),
                                                           ("a white", 2), ("a white", 3), ("a white", 4)]
    assert cli_batch.seed_range("7") == range(7, 8)
    for bad in ("5-2", "x", "-3", "1-y", f"0-{2**64}"):
        with pytest.raises(ValueError, match="--seeds"):
            cli_batch.seed_range(bad)
    with pytest.raises(ValueError, match=r"--seeds 0-999999 with the 2 prompt\(s\) of .*p\.txt makes 2000000 images; "
                                         r"one batch takes at most 1000000: give a shorter range, and each further "
                                         r"range its own --out\."):
        cli_batch.prompt_jobs(f, "0-999999")


def test_the_job_limit_is_checked_before_any_job_is_built(tmp_path, monkeypatch):
    f = tmp_path / "p.txt"
    f.write_text("a red circle\na white square\n")
    monkeypatch.setattr(cli_batch, "MAX_PROMPT_JOBS", 6)
    assert len(cli_batch.prompt_jobs(f, "0-2")) == 6  # the limit itself is allowed
    monkeypatch.setattr(batch, "Job", lambda *a: pytest.fail("built a job before refusing"))
    with pytest.raises(ValueError, match=r"makes 8 images; one batch takes at most 6"):
        cli_batch.prompt_jobs(f, "0-3")
    with pytest.raises(ValueError, match=r"makes 36893488147419103232 images"):  # 2**64 seeds: past len()'s reach
        cli_batch.prompt_jobs(f, f"0-{2**64 - 1}")


def test_a1111_option_lines_give_their_own_settings_and_seeds(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text('a red circle\n--prompt "a blue square" --steps 3 --cfg_scale 4 --seed 9 --n_iter 2\n')
    jobs = cli_batch.prompt_jobs(f, "0-1")
    assert [j.args for j in jobs] == [{"prompt": "a red circle", "seed": 0}, {"prompt": "a red circle", "seed": 1},
                                      {"prompt": "a blue square", "steps": 3, "guidance": 4.0, "seed": 9},
                                      {"prompt": "a blue square", "steps": 3, "guidance": 4.0, "seed": 10}]
    assert jobs[3].where.endswith("p.txt:2 with seed 10")
    f.write_text("--prompt a cat --batch_size 2\n")  # a range is stepped by the line's count: no seed twice
    assert [j.args["seed"] for j in cli_batch.prompt_jobs(f, "0-4")] == [0, 1, 2, 3, 4, 5]
    f.write_text("a red circle\n--prompt a cat --stepz 3\n")
    with pytest.raises(ValueError, match=r"p\.txt:2: --stepz is not an option"):
        cli_batch.prompt_jobs(f, "0")
