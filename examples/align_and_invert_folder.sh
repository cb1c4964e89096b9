#!/usr/bin/env bash
# Align every photo in a folder, then invert the faces and paste them back into the photos.
#   examples/align_and_invert_folder.sh PHOTOS_DIR OUT_DIR [ENCODER.pt]
# Exit code: 0 all photos done, 1 some failed (see OUT_DIR/*/facefix-report.json), 2 usage error.
set -euo pipefail
photos=${1:?usage: $0 PHOTOS_DIR OUT_DIR [ENCODER.pt]}
out=${2:?usage: $0 PHOTOS_DIR OUT_DIR [ENCODER.pt]}
encoder=${3:+--encoder "$3"}
status=0
facefix align "$photos" --face all -o "$out/aligned" || status=$?
# shellcheck disable=SC2086  # $encoder is intentionally empty or two words
facefix invert "$photos" --face all --save latent $encoder -o "$out/inverted" || status=$?
exit "$status"
