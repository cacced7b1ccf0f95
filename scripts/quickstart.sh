#!/usr/bin/env bash
# The README's first command: install what is missing, build Release, run the main job on the
# default model (../shared/models/stories260K/stories260K.gguf): greedy generation of a story.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/release/src/cli/veil generate -n 200
