#!/usr/bin/env bash
# Render an age sweep of one photo: 9 photos from -4 to +4, a strip PNG and a looping GIF.
#   examples/sweep.sh PHOTO OUT_DIR [EXTRA facefix edit OPTIONS...]
# Outputs: OUT_DIR/<name>_age-4.<ext> ... OUT_DIR/<name>_age+4.<ext>, OUT_DIR/<name>.sweep.png, OUT_DIR/<name>.sweep.gif
set -euo pipefail
photo=${1:?usage: $0 PHOTO OUT_DIR [options...]}
out=${2:?usage: $0 PHOTO OUT_DIR [options...]}
shift 2
# --mask-from original: the mask of the unedited inversion for every value, so the background never flickers
facefix edit "$photo" --age=-4:4:9 --mask-from original -o "$out" "$@"
