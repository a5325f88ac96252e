#!/usr/bin/env bash
# Run one method on every task of the suite, then export the leaderboard.
#
#   ./run_all.sh <backbone> <adapter> [--demo] [--tasks a,b] [extra python -m vtab_lily.run args]
#   ./run_all.sh vit lily --demo                 # the demo suite, a few minutes on CPU
#   ./run_all.sh vit lora --rank 8 --out runs     # all 19 VTAB-1K tasks
#
# Finished tasks are skipped and interrupted ones resume (each run does that itself). A failing
# task does not stop the others; a task locked by another process is reported as running
# elsewhere, not as failed. Exits 1 listing the failed tasks, 130 on Ctrl-C, else 0.
# PYTHON overrides the interpreter (default python3), LEADERBOARD_DIR the leaderboard folder
# (default leaderboards).
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
tasks="" out="runs" demo=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks) tasks=${2:?--tasks needs a comma-separated list}; shift 2 ;;
        --tasks=*) tasks=${1#--tasks=}; shift ;;
        --demo) demo=(--demo); shift ;;
        --out) out=${2:?--out needs a folder}; extra+=("$1" "$2"); shift 2 ;;
        --out=*) out=${1#--out=}; extra+=("$1"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done

# Paths stay relative to where you call it from; the package is found next to this script.
export PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
run=("$python" -m vtab_lily.run --backbone "$backbone" --adapter "$adapter" "${demo[@]}" "${extra[@]}")

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

failed=() elsewhere=() done_ok=()
start=$SECONDS
for task in "${selected[@]}"; do
    echo "=== $backbone $adapter $task ($(( ${#done_ok[@]} + ${#failed[@]} + ${#elsewhere[@]} + 1 ))/${#selected[@]})"
    "${run[@]}" --task "$task"
    rc=$?
    case $rc in
        0) done_ok+=("$task") ;;
        75) elsewhere+=("$task") ;;
        130) echo "interrupted during $task; rerun the same command to resume" >&2; exit 130 ;;
        *) failed+=("$task (exit $rc)") ;;
    esac
done
echo "=== ${#done_ok[@]} done, ${#elsewhere[@]} running elsewhere, ${#failed[@]} failed in $(( SECONDS - start )) s"

"$python" -m vtab_lily.leaderboard --runs "$out" --out "${LEADERBOARD_DIR:-leaderboards}" || {
    echo "error: leaderboard export failed" >&2
    failed+=("leaderboard export")
}

if [[ ${#elsewhere[@]} -gt 0 ]]; then
    echo "running elsewhere (locked by another process, not failed): ${elsewhere[*]}"
fi
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
exit 0
