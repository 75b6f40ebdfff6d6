#!/usr/bin/env bash
# Kill -9 a run again and again at random moments, resuming it each time,
# until it finishes; then compare with an uninterrupted run: the output, the
# job log's seq and outcome columns and the list of skipped records must be
# identical. The input has bad records (skipped with --skip-bad-input) and
# failing ones throughout, so lines and input records part ways.
#
# usage: scripts/resume-stress.sh [RECORDS] [-- extra coordinator options]
#   e.g. scripts/resume-stress.sh 100000 -- --executor thread
# BIN (default target/debug) is where coordinator and worker are.
set -euo pipefail
RECORDS=${1:-100000}
shift || true
[ "${1:-}" = "--" ] && shift
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/debug}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/resume-stress.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
awk -v n="$RECORDS" 'BEGIN {
    for (i = 0; i < n; i++) {
        if (i % 97 == 5 || i % 1000 == 500 || i % 1000 == 501) print "bad record " i
        else if (i % 331 == 7) printf "{\"n\":%d,\"fault\":\"error\"}\n", i
        else printf "{\"n\":%d,\"fault\":\"\"}\n", i
    }
}' >in.jsonl
run() { exec "$BIN/coordinator" --task fault --input in.jsonl --worker-bin "$BIN/worker" \
    --skip-bad-input --no-progress "$@" 2>>stderr.log; }
(run -o ref.jsonl --joblog ref.tsv "$@") || [ $? = 1 ]
kills=0 resume=
while :; do
    (run -o out.jsonl --joblog out.tsv $resume "$@") &
    pid=$!
    resume=--resume
    sleep "0.$((RANDOM % 4))$((RANDOM % 10))"
    if kill -9 "$pid" 2>/dev/null; then
        { wait "$pid"; } 2>/dev/null || true
        kills=$((kills + 1))
    else
        wait "$pid" || [ $? = 1 ]
        break
    fi
done
ok=yes
cmp -s ref.jsonl out.jsonl || { echo "output differs"; ok=no; }
cmp -s <(cut -f1,5 ref.tsv) <(cut -f1,5 out.tsv) || { echo "job log differs"; ok=no; }
cmp -s <(sort -n ref.jsonl.procpool-skipped) <(sort -n out.jsonl.procpool-skipped) ||
    { echo "skipped-records list differs"; ok=no; }
echo "resume-stress: $RECORDS records ($(wc -l <ref.jsonl) lines), killed $kills times, identical: $ok"
[ $ok = yes ]
