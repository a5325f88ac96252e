#!/usr/bin/env bash
# Run one method on every task of the suite, then export the leaderboard.
#
#   ./run_all.sh <backbone> <adapter> [--demo] [--tasks a,b] [--dry-run] [extra python -m vtab_lily.run args]
#   ./run_all.sh vit lily --demo                 # the demo suite, a few minutes on CPU
#   ./run_all.sh dinov2-b lily --dry-run         # every task's resolved run (label, settings); nothing runs
#   ./run_all.sh vit lily --paper                # all 19 VTAB-1K tasks, the official setup;
#                                                # leaderboards with final and test-selected numbers
#   ./run_all.sh vit lora --rank 8 --out runs     # any other run option applies to every task
#   ./run_all.sh vit lily --fetch                # download missing weights and VTAB-1K first
#
# <backbone>: any name or alias that `python -m vtab_lily.run --list-backbones` lists (vit, vim,
# dinov2-b, clip-b, ...); an alias names the full-size backbone, with --demo the tiny config of its
# family. --dry-run prints each task's resolved run and what a real run would still need, then
# stops: nothing is trained, fetched or exported.
# Weights and data are checked once, before any work: a missing piece stops it with one message
# naming every piece and the command that fetches it (--fetch fetches them first).
# All tasks run in one process (python -m vtab_lily.run --batch), so the backbone weights are
# loaded once. Finished tasks are skipped before any model is built and interrupted ones resume.
# A failing task does not stop the others; a task locked by another process is reported as
# running elsewhere, not as failed. Exits 1 listing the failed tasks, 130 on Ctrl-C, else 0.
# PYTHON overrides the interpreter (default python3), LEADERBOARD_DIR the leaderboard folder
# (default leaderboards); ANALYZE=0 skips the adapter analysis (leaderboards/analysis).
set -u -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
    usage >&2
    exit 2
fi
backbone=$1 adapter=$2
shift 2

python=${PYTHON:-python3}
tasks="" out="runs" demo=() paper=() fetch=() dry=()
extra=()
need() { [[ -n "${2:-}" ]] || { echo "error: $1 needs $3" >&2; exit 2; }; }  # bad input: exit 2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks) need "$1" "${2:-}" "a comma-separated list"; tasks=$2; shift 2 ;;
        --tasks=*) need "--tasks" "${1#--tasks=}" "a comma-separated list"; tasks=${1#--tasks=}; shift ;;
        --demo) demo=(--demo); shift ;;
        --paper) paper=(--paper); shift ;;
        --fetch) fetch=(--fetch); shift ;;
        --dry-run) dry=(--dry-run); shift ;;
        --out) need "$1" "${2:-}" "a folder"; out=$2; extra+=("$1" "$2"); shift 2 ;;
        --out=*) out=${1#--out=}; extra+=("$1"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done

# Paths stay relative to where you call it from; the package is found next to this script.
export PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
run=("$python" -m vtab_lily.run --backbone "$backbone" --adapter "$adapter" "${demo[@]}" "${paper[@]}" "${extra[@]}")

# Check the arguments once (names, adapter options) and get the suite's task list.
all_tasks=$("${run[@]}" --list-tasks) || exit 2
if [[ -n "$tasks" ]]; then
    IFS=',' read -r -a selected <<< "$tasks"
    for t in "${selected[@]}"; do
        if ! grep -qx -- "$t" <<< "$all_tasks"; then
            echo "error: unknown task '$t'; choose from: $(tr '\n' ' ' <<< "$all_tasks")" >&2
            exit 2
        fi
    done
else
    mapfile -t selected <<< "$all_tasks"
fi

# All tasks in one process (imports, CUDA context and backbone weights paid once); each line of
# the batch file is one run's arguments. The batch reports each run as "code<TAB>label<TAB>status".
work=$(mktemp -d "${TMPDIR:-/tmp}/run_all.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
write_batch() {  # write_batch FILE ARGS...: one line per selected task
    "$python" -c '
import json, sys
path, tasks, args = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
with open(path, "w", encoding="utf-8") as f:
    for task in tasks:
        f.write(json.dumps([*args, "--task", task]) + "\n")
' "$1" "$(IFS=,; echo "${selected[*]}")" "${@:2}"
}
write_batch "$work/batch.jsonl" "${run[@]:3}" || exit 1

# --dry-run: every task's run resolved and printed by the batch (no weights needed), then the
# pre-flight of the real runs says what they would still need; nothing is fetched or exported.
if [[ ${#dry[@]} -gt 0 ]]; then
    [[ ${#fetch[@]} -gt 0 ]] && echo "note: --dry-run fetches nothing; --fetch applies to the real run"
    write_batch "$work/dry.jsonl" "${run[@]:3}" --dry-run || exit 1
    "$python" -m vtab_lily.run --batch "$work/dry.jsonl" || exit $?
    "$python" -m vtab_lily.run --batch "$work/batch.jsonl" --preflight
    rc=$?
    [[ $rc -eq 130 ]] && exit 130
    [[ $rc -ne 0 ]] && echo "dry run: a real run would stop there until those pieces are in place (--fetch fetches them)"
    echo "=== dry run: ${#selected[@]} task(s) resolved; nothing was trained, fetched or exported"
    exit 0
fi

# Every checkpoint and data task the runs need, checked (or with --fetch, fetched) before any
# work; finished runs need nothing. A missing piece ends here: no runs, no leaderboard.
"$python" -m vtab_lily.run --batch "$work/batch.jsonl" --preflight "${fetch[@]}" || exit $?

failed=() elsewhere=() done_ok=()
start=$SECONDS
VTAB_LILY_BATCH_REPORT="$work/report.tsv" "$python" -m vtab_lily.run --batch "$work/batch.jsonl"
rc=$?
if [[ $rc -eq 130 ]]; then
    echo "interrupted; rerun the same command to resume" >&2
    exit 130
fi
if [[ -f "$work/report.tsv" ]]; then
    while IFS=$'\t' read -r code label status; do
        task=${label##* }
        case $code in
            0) done_ok+=("$task") ;;
            75) elsewhere+=("$task") ;;
            *) failed+=("$task (exit $code)") ;;
        esac
    done < "$work/report.tsv"
fi
if [[ $rc -ne 0 && ${#failed[@]} -eq 0 && ${#elsewhere[@]} -eq 0 ]]; then
    failed+=("batch (exit $rc)")  # the batch itself could not run
fi
echo "=== ${#done_ok[@]} done, ${#elsewhere[@]} running elsewhere, ${#failed[@]} failed in $(( SECONDS - start )) s"

# What the adapters learned (dW spectra, Lily's experts), linked from the leaderboard; ANALYZE=0 skips it.
if [[ "${ANALYZE:-1}" != 0 ]]; then
    "$python" -m vtab_lily.analyze "$out" --out "${LEADERBOARD_DIR:-leaderboards}/analysis" || {
        echo "error: adapter analysis failed" >&2
        failed+=("analysis")
    }
fi

# --paper: the paper's test-selected number beside the honest final-epoch one.
metrics=(final)
[[ ${#paper[@]} -gt 0 ]] && metrics+=(best)
for metric in "${metrics[@]}"; do
    "$python" -m vtab_lily.leaderboard --runs "$out" --out "${LEADERBOARD_DIR:-leaderboards}" --metric "$metric" || {
        echo "error: leaderboard export (--metric $metric) failed" >&2
        failed+=("leaderboard export ($metric)")
    }
done

if [[ ${#elsewhere[@]} -gt 0 ]]; then
    echo "running elsewhere (locked by another process, not failed): ${elsewhere[*]}"
fi
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
exit 0
