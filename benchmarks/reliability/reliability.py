"""Run the reliability scenarios (real signals, real processes, a real PostgreSQL-backed server) several times
and record how each ended -> benchmarks/reliability/README.md.

    python benchmarks/reliability/reliability.py --repeats 2

Each scenario is a test in tests/ that asserts the outcome it names (the resumed run's metrics equal the
uninterrupted run's exactly; every concurrent run finished with every metric; the run outlived the restart).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    (
        "SIGTERM mid-run, then `--resume`: final metrics, loss history and predictions equal an uninterrupted run",
        "tests/test_resume.py::test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result[sigterm]",
    ),
    (
        "kill -9 mid-run (run left RUNNING), then `--resume`: the same, exactly",
        "tests/test_resume.py::test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result[kill-9]",
    ),
    (
        "4 training runs started at once into one SQLite `mlflow.db`: all FINISHED, no metric lost",
        "tests/test_concurrency.py::test_four_runs_started_at_once_all_finish_with_every_metric",
    ),
    (
        "`sweep --parallel 2` with 4 children: all FINISHED under the parent, no metric lost",
        "tests/test_sweep.py::test_parallel_children_run_side_by_side_and_none_is_lost",
    ),
    (
        "mlflow server on PostgreSQL stopped and restarted in the middle of a run: the run FINISHED, every epoch "
        "logged",
        "tests/test_server.py::test_a_run_survives_the_server_restarting_in_its_middle",
    ),
    (
        "a tampered checkpoint: refused, the run left as it was",
        "tests/test_resume.py::test_a_tampered_checkpoint_is_refused",
    ),
]
F = "tests/test_faults.py::"
# Faults found by trying the service as an attacker would (issue 15); each test failed before its fix.
FAULTS = [
    (
        "`MLFLOW_TRACKING_URI=http://alice:pw@...` against a real `mlflow server`: `train` and `compare-runs` print, "
        "log and tag no password (MLflow's own `View run` line included)",
        F + "test_a_password_in_the_tracking_uri_never_reaches_the_terminal_or_the_run",
    ),
    (
        "`--data https://alice:pw@host/...`: the error line shows no credentials",
        F + "test_a_data_uri_with_credentials_is_not_echoed_in_the_error",
    ),
    (
        "token cache entry truncated, bit-flipped, or holding other (well-formed) ids: rebuilt, one warning line",
        F + "test_a_damaged_token_cache_entry_is_rebuilt_with_one_warning",
    ),
    (
        "token cache folder unwritable / disk full while writing it: the run goes on without it, no `.tmp` left",
        F
        + "test_an_unwritable_token_cache_means_running_without_it "
        + F
        + "test_a_full_token_cache_leaves_no_temporary_file",
    ),
    (
        "parsed-archive cache altered (same sizes, other text): not used, the archive read again, true digest",
        F + "test_an_altered_parsed_archive_cache_is_not_used_under_the_original_digest",
    ),
    (
        "`seed=4294967296`, `data_seed` past 2**32-1, one-class or empty training subset, `--set epochs=@3`, "
        "`--set lr=[1`, `mode=basic` with `pool=avg:3x3`, `mode=pool` with `pool=none`, a 6,001-character "
        "`description`: one line, exit 2, no run",
        F + "test_bad_input_found_inside_the_run_now_fails_before_any_run",
    ),
    ("a config file that is not UTF-8: one line, no run", F + "test_a_config_file_that_is_not_utf8_is_one_line"),
    (
        "half-truncated `mlflow.db`: one line before any data is read",
        F + "test_a_damaged_mlflow_db_is_one_line_before_any_work",
    ),
    (
        "the store fails mid-run (disk full): one line, the run FAILED, not RUNNING",
        F + "test_a_store_that_fails_mid_run_is_one_line_not_pages",
    ),
    (
        "`git/commit` from another repository's folder: the package's own commit is logged",
        F + "test_the_logged_commit_is_the_codes_not_the_current_folders",
    ),
    (
        "`--resume` with other code: refused in one line; with `--allow-code-change` it finishes and tags the change",
        F + "test_resuming_with_other_code_is_refused_unless_allowed_and_then_recorded",
    ),
    (
        "a second `--resume` of a run being resumed: one line, the run untouched; the next resume goes ahead",
        F + "test_a_second_resume_of_a_run_being_resumed_is_one_line",
    ),
    (
        "resume after a kill during model logging: orphan PENDING model marked FAILED, `error` tag cleared, "
        "`time/train_s` covers the earlier epochs",
        F + "test_a_resume_after_the_last_epoch_clears_the_error_tag_fails_orphan_models_and_times_every_epoch",
    ),
    (
        "Ctrl-C during tokenization: run KILLED, no `--resume` command offered (it would be refused)",
        F + "test_ctrl_c_before_the_first_checkpoint_offers_no_resume_that_would_be_refused",
    ),
    (
        "server whose `/health` answers but whose API hangs: one line in under 20 s, no run",
        F + "test_a_server_whose_api_hangs_is_one_line_within_seconds",
    ),
    (
        "unreachable `postgresql://` URI: one line in under 20 s, no password shown",
        F + "test_an_unreachable_postgresql_uri_is_one_line_within_seconds",
    ),
    (
        "`sweep --parallel 2` (4 children), SIGTERM to the parent alone / to the whole process group once two "
        "children have checkpoints: nothing else starts, both children KILLED with a checkpoint, none RUNNING; "
        "`--resume-parent` continues those two runs and runs the other two: 4 FINISHED",
        F + "test_a_stopped_parallel_sweep_starts_nothing_new_and_its_resume_continues_the_killed_children",
    ),
    (
        "the served model (`bertpooled serve`) sent a 100,000-deep JSON body: a 400 naming the problem, then serves on",
        F + "test_the_served_model_answers_deeply_nested_json_with_a_400_and_still_serves",
    ),
]
C = "tests/test_fault_classes.py::"
# Faults by class (issue 25): each row a class, its test trying several members (the reported example among them).
CLASSES = [
    (
        "OS errors on user-given paths: a 5,000-character `--config`/`--data`/`--model` (ENAMETOOLONG), a symlink loop "
        "in the data folder (ELOOP), EACCES/ENOSPC/EROFS/ENXIO on any command's path; `compare-runs --output` onto a "
        "file or `/dev/null`: one line naming the path and reason, no run",
        C
        + "test_a_path_too_long_for_the_system_is_one_line_whichever_option_gives_it "
        + C
        + "test_a_symlink_loop_in_the_data_folder_is_one_line "
        + C
        + "test_every_command_turns_an_os_error_on_a_path_into_one_line_and_a_bug_keeps_its_traceback "
        + C
        + "test_compare_runs_output_onto_a_file_or_a_device_is_one_line_before_any_run_is_read",
    ),
    (
        "inputs sized to hurt: a 700-byte YAML alias bomb, lists as settings, YAML nested 30 deep (file or `--set`), "
        "a 300 KB config, a 10,000-character experiment name, `--seeds 100000`, 1,200 children, seeds too long for a "
        "tag: one line before work starts",
        C
        + "test_a_config_file_sized_to_hurt_is_one_line_before_yaml_builds_it "
        + C
        + "test_a_set_value_sized_to_hurt_is_one_line_and_a_plain_anchor_still_works "
        + C
        + "test_an_experiment_name_past_mlflows_limit_is_one_line_before_the_data_is_read "
        + C
        + "test_a_sweep_grid_larger_than_a_parent_run_holds_is_one_line_at_once",
    ),
    (
        "`compare-runs`, `train --resume`, `sweep --resume-parent`, `serve runs:/...` against a half-truncated "
        "`mlflow.db` or an unreachable PostgreSQL, `--resume` against a server whose API hangs: one line, probed "
        "first; each store failure's line names the fix that fits its cause; MLflow's logged tracebacks cut to a line",
        C
        + "test_every_command_that_touches_the_store_probes_it_first_and_says_so_in_one_line "
        + C
        + "test_resume_against_a_server_whose_api_hangs_is_one_line_within_seconds "
        + C
        + "test_a_store_failure_names_the_fix_that_fits_its_cause_and_no_other "
        + C
        + "test_mlflows_own_log_lines_keep_their_first_line_and_lose_their_traceback",
    ),
    (
        "4 processes meet a new SQLite `mlflow.db` at once: all open it, its tables made once",
        C + "test_processes_meeting_a_new_sqlite_store_at_once_all_get_it_made_once",
    ),
    (
        "`serve`: a body over the limit (declared or streamed) or holding a text over the limit is a 413; batches "
        "give the unbatched answer; a timed-out request stops at its next batch; small requests go between batches",
        C
        + "test_a_request_over_the_servers_limits_gets_a_413_and_is_not_kept "
        + C
        + "test_a_large_request_is_predicted_in_fixed_size_batches_with_the_same_answer "
        + C
        + "test_a_request_past_the_timeout_stops_at_its_next_batch "
        + C
        + "test_small_requests_are_answered_between_the_batches_of_a_large_one",
    ),
    (
        "`kill -9` to a `sweep --parallel 2` parent while two children train: both workers exit (none under PID 1), "
        "no queued child starts, both children and the parent KILLED",
        C + "test_a_sigkilled_parallel_sweep_takes_its_workers_with_it_and_its_runs_are_marked",
    ),
    (
        "a run or sweep driven by a live process (here or on another host, a resume preparing it, whatever its "
        "cache folder): `--resume`/`--resume-parent` refused; a dead owner's run taken over; `--take-over` when asked",
        C
        + "test_liveness_tells_a_driven_run_from_one_whose_process_died "
        + C
        + "test_a_run_driven_by_a_live_process_is_refused_by_resume_and_taken_over_only_when_asked "
        + C
        + "test_a_resume_in_another_process_holds_the_run_whatever_its_cache_folder "
        + C
        + "test_a_sweep_still_driven_by_a_live_process_is_refused_by_resume_parent",
    ),
    (
        "checkpoint weights or meta altered with the tag deleted, another run's checkpoint copied in with its tag: "
        "refused in one line; an untouched checkpoint without its tag resumes",
        C
        + "test_a_checkpoint_altered_or_copied_with_its_tag_deleted_or_copied_is_refused "
        + C
        + "test_an_untouched_checkpoint_whose_tag_was_deleted_still_resumes",
    ),
    (
        "a resumed sweep's new children get the thread count its earlier children logged (parallel or local)",
        C
        + "test_a_resumed_sweep_runs_its_children_on_the_thread_count_its_earlier_children_had "
        + C
        + "test_parallel_workers_keep_a_kept_auto_thread_count",
    ),
    (
        "a predictions file with a non-numeric or out-of-range probability, other labels, missing columns or "
        "repeated ids: named in a note, the run left out; a damaged logged model (truncated weights, edited width) "
        "at `serve`: one line",
        C
        + "test_every_kind_of_unusable_predictions_file_is_named "
        + C
        + "test_serving_a_damaged_logged_model_is_one_line",
    ),
]
# Minutes each under load: run once whatever --repeats says.
EXPENSIVE = {FAULTS[0][1], FAULTS[-2][1], CLASSES[5][1]}
GROUPS = {"first": SCENARIOS, "faults": FAULTS, "classes": CLASSES}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--output",
        default=str(ROOT / "benchmarks" / "reliability" / "README.md"),
        help="the whole report (group `first`); `-` prints the table only",
    )
    parser.add_argument(
        "--group",
        choices=sorted(GROUPS),
        default="first",
        help="first: the first round's scenarios; faults: issue 15's; classes: issue 25's",
    )
    args = parser.parse_args()
    return args


def scenario(title: str, node: str, repeats: int) -> str:
    """One scenario run `repeats` times (its test passing is the scenario holding): its table row."""
    passed, seconds = 0, []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider", *node.split()],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds.append(time.perf_counter() - start)
        passed += proc.returncode == 0
        print(f"{node}: {'ok' if proc.returncode == 0 else 'FAILED'} ({seconds[-1]:.0f}s)", flush=True)
        if proc.returncode != 0:  # the assertion and its context, not the captured logs after it
            print(
                "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("E ", ">")))[-3000:],
                file=sys.stderr,
            )
    return f"| {title} | {passed} of {repeats} | {sorted(seconds)[len(seconds) // 2]:.0f} | `{node.split('::')[0]}` |"


def main() -> None:
    args = parse_args()
    rows = [scenario(title, node, 1 if node in EXPENSIVE else args.repeats) for title, node in GROUPS[args.group]]
    if args.output == "-":
        print("\n".join(["| scenario | held | median s | test |", "|---|---:|---:|---|", *rows]))
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    text = "\n".join(
        [
            "# Reliability",
            "",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; commit "
            f"{commit}; "
            f"{time.strftime('%Y-%m-%d')}",
            f"- command: `python benchmarks/reliability/reliability.py --repeats {args.repeats}` (each row is a test "
            "that asserts its outcome)",
            "",
            "| scenario | held | median s | test |",
            "|---|---:|---:|---|",
            *rows,
            "",
        ]
    )
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
