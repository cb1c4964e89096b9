#!/usr/bin/env bash
# Age every face in a folder of photos (recursively), resumable and shardable, then list what failed.
#   examples/edit_folder.sh PHOTOS_DIR OUT_DIR [SHARD]     e.g. SHARD=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
# Re-running the same command skips photos whose outputs exist (an interrupted run resumes).
# Exit code: 0 all photos done, 1 some failed (listed below and in OUT_DIR/facefix-report.json), 2 usage error.
set -uo pipefail
photos=${1:?usage: $0 PHOTOS_DIR OUT_DIR [I/N]}
out=${2:?usage: $0 PHOTOS_DIR OUT_DIR [I/N]}
shard=${3:+--shard "$3"}
# shellcheck disable=SC2086  # $shard is intentionally empty or two words
facefix edit "$photos" --age +3 --face all --save latent,mask -o "$out" $shard
status=$?
if [ "$status" -eq 1 ]; then
    python - "$out/facefix-report.json" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["inputs"]:
    if item["status"] == "failed":
        print("failed:", item["error"])
PY
fi
exit "$status"
