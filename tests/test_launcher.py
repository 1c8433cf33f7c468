"""The ``streamr1`` console script (streamr1.launcher): fast answers without Lightning, errors that lead with their
cause, and Ctrl-C exiting with 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from streamr1 import launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")
HEAVY = ("torch", "lightning", "diffusers", "open_clip", "transformers", "jsonargparse", "torchvision")
PROBE = (
    "import sys; from streamr1.launcher import main; rc = main(sys.argv[1:]); "
    f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr); raise SystemExit(rc)"
)


def _probe(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    return proc, time.perf_counter() - t


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("HEAVY")]


def test_help_and_version_answer_without_importing_any_deep_learning_library():
    proc, seconds = _probe("--help")
    assert proc.returncode == 0
    assert "HEAVY []" in proc.stderr
    out = _lines(proc.stdout)
    assert out[0] == "usage: streamr1 [-h] [--version] {fit,validate,test,predict,export,calibrate,evaluate} ..."
    assert out[-1] == "Set STREAMR1_DEBUG=1 for full error reports (tracebacks, jsonargparse's listing)."
    assert seconds < 20  # a Python start and PyYAML at most; Lightning alone takes 14-60 s on these machines
    proc, _ = _probe("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "streamr1 0.1.0" and "HEAVY []" in proc.stderr


def test_the_subcommand_list_of_the_fast_help_is_the_clis():
    from streamr1.cli import StreamR1CLI

    assert list(launcher.SUBCOMMANDS) == list(StreamR1CLI.subcommands())


def test_the_console_script_is_the_launcher():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        assert tomllib.load(fh)["project"]["scripts"]["streamr1"] == "streamr1.launcher:main"


def test_a_tab_in_a_config_names_the_file_the_line_and_the_tab(tmp_path):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("trainer:\n  max_steps: 3\n\tdevices: 1\n")
    proc, _ = _probe("fit", "--config", TINY, "--config", str(bad))
    assert proc.returncode == 2 and "HEAVY []" in proc.stderr
    err = _lines(proc.stderr)
    assert err[0] == (f"streamr1: error: YAML error in {bad}, line 3, column 1: a tab character; YAML indents with "
                      "spaces only.")
    assert err[1].strip() == "<TAB>devices: 1"
    assert err[-1] == (f"Replace the tab(s) in {bad} with spaces (e.g. `expand -t 2`), keeping the indentation of "
                       "the keys.")


def test_other_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "stack.yaml"
    bad.write_text("trainer:\n  callbacks: [a, b\n  max_steps: 3\n")
    proc, _ = _probe("fit", "--config", str(bad))
    assert proc.returncode == 2
    err = _lines(proc.stderr)
    assert err[0].startswith(f"streamr1: error: YAML error in {bad}, line 3, column ")
    assert "expected ',' or ']'" in err[0]
    assert err[-1] == f"Fix the YAML syntax of {bad} at line 3 and rerun."


def test_command_line_mistakes_found_before_any_import(tmp_path):
    proc, _ = _probe("fitt", "--config", TINY)
    assert proc.returncode == 2
    assert _lines(proc.stderr)[0] == "streamr1: error: unknown subcommand 'fitt'; did you mean 'fit'?"
    proc, _ = _probe("fit", "--config", "configs/nope.yaml")
    err = _lines(proc.stderr)
    assert proc.returncode == 2 and "HEAVY []" in proc.stderr
    assert err[0] == f"streamr1: error: --config file not found: configs/nope.yaml (from {ROOT})."
    assert err[-1] == "Check the path; the recipes are in configs/, the callback stacks in callbacks/."


def test_yaml_check_helpers():
    assert launcher.config_files(["fit", "--config", "a.yaml", "-c", "b.yml", "--config=c.yaml", "--x", "y"]) == [
        "a.yaml", "b.yml", "c.yaml"]
    with pytest.raises(launcher.UsageError, match="is a folder"):
        launcher.precheck(["fit", "--config", ROOT])
    launcher.precheck(["fit", "--config", "{trainer: {max_steps: 2}}"])  # an inline config is jsonargparse's to read


def test_a_misspelled_class_path_leads_with_the_cause_and_a_suggestion(capsys):
    args = ["fit", "--config", TINY, "--model.student.class_path", "streamr1.models.CausalWanDenoiserr"]
    assert launcher.main(args) == 2
    err = _lines(capsys.readouterr().err)
    assert err[0] == ("streamr1: error: model.student: cannot import class_path 'streamr1.models.CausalWanDenoiserr': "
                      "module 'streamr1.models' has no attribute 'CausalWanDenoiserr'")
    assert err[1] == "  did you mean class_path: streamr1.models.CausalWanDenoiser?"
    assert err[-1] == f"(the full report: STREAMR1_DEBUG=1 streamr1 {' '.join(args)})"
    assert len(err) <= 4  # jsonargparse's own report is 95 lines


def test_debug_mode_keeps_jsonargparses_full_report(capsys, monkeypatch):
    monkeypatch.setenv("STREAMR1_DEBUG", "1")
    with pytest.raises(SystemExit) as info:
        launcher.main(["fit", "--config", TINY, "--model.student.class_path", "streamr1.models.CausalWanDenoiserr"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "has no attribute 'CausalWanDenoiserr'" in err.splitlines()[-1]


def test_a_missing_reward_file_leads_with_the_rewards_own_message(tmp_path, capsys):
    fragment = tmp_path / "reward.yaml"
    fragment.write_text("reward:\n  model:\n    class_path: streamr1.rewards.openclip.OpenCLIPVideoReward\n"
                        f"    init_args: {{state_path: {tmp_path / 'missing.pt'}}}\n")
    args = ["fit", "--config", TINY, "--config", str(fragment), "--trainer.logger", "false"]
    assert launcher.main(args) == 1
    err = _lines(capsys.readouterr().err)
    assert err[0].startswith(f"streamr1: error: OpenCLIPVideoReward: reward state file not found: "
                             f"'{tmp_path / 'missing.pt'}'. Set `state_path`")
    assert not any("does not implement protocol" in ln for ln in err)  # jsonargparse's misleading first line
    assert err[-1] == f"(the full report: STREAMR1_DEBUG=1 streamr1 {' '.join(args)})"


def test_summary_of_a_union_report_skips_jsonargparses_framing():
    report = (
        "Does not validate against any of the Union subtypes\nSubtypes: [<class 'A'>, <class 'NoneType'>]\nErrors:\n"
        "  - Does not validate against any of the Union subtypes\n    Subtypes: [<class 'P'>]\n    Errors:\n"
        "      - Import path x.Y does not implement protocol P\n"
        "      - Y: weights file not found: 'w.pt'. Set `path`.\n"
        "    Given value type: <class 'Namespace'>\n    Given value: Namespace(class_path='x.Y')\n"
        "  - Expected a <class 'NoneType'>\nGiven value type: <class 'Namespace'>\n"
    )
    out = launcher.summarize_config_error(report, argv=["fit"]).splitlines()
    assert out[0] == "streamr1: error: Y: weights file not found: 'w.pt'. Set `path`."
    assert out[-1] == "(the full report: STREAMR1_DEBUG=1 streamr1 fit)"


@pytest.mark.slow
def test_ctrl_c_during_fit_shuts_down_cleanly_and_exits_130(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "streamr1.launcher", "fit", "--config", TINY, "--trainer.max_steps", "1000000",
           "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:  # the module prints this at fit start
            if "[streamr1] effective batch" in line:
                break
        time.sleep(2.0)  # some training steps
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in out + err  # Lightning's shutdown ran
    assert err.rstrip().splitlines()[-1] == "streamr1: interrupted (SIGINT); shut down cleanly"


def test_a_project_error_in_the_chain_comes_first_whole(tmp_path):
    from streamr1.data.prompts import read_prompts

    missing = str(tmp_path / "prompts.txt")
    try:
        try:
            read_prompts(missing)
        except FileNotFoundError as err:
            raise ValueError("Does not validate against any of the Union subtypes\nErrors:\n  - Expected a <class "
                             "'NoneType'>") from err
    except ValueError as outer:
        out = launcher.summarize_config_error(str(outer), outer, argv=["fit"]).splitlines()
    assert out[0] == (f"streamr1: error: Prompt file not found: {missing!r}. Set `data.prompts_file` to a text file, "
                      "one prompt a line.")
    assert out[-1] == "(the full report: STREAMR1_DEBUG=1 streamr1 fit)"
