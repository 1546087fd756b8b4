#!/bin/sh
# Train a checkpoint into the models volume, then point `current` at it so every `api` replica
# in watch mode hot-swaps to it. Used by the compose `trainer` service:
#
#   docker compose --profile train run --rm trainer --config configs/bert_tiny.yaml --max-steps 200
#
# Arguments go to `bert-train` (corpus and output directory are filled in unless given).
# The pointer moves only after the checkpoint directory is complete: the run's final/ is copied
# under a temporary name, renamed into place, and `current` is replaced with a rename.
set -eu
MODELS_ROOT="${MODELS_ROOT:-/models}"
name="${RUN_NAME:-run-$(date -u +%Y%m%d-%H%M%S)}"
case "$name" in
  *[!A-Za-z0-9._-]* | .* | "") echo "train-and-publish: invalid RUN_NAME '$name'" >&2; exit 2 ;;
esac
run_dir="$MODELS_ROOT/runs/$name"
if [ -e "$MODELS_ROOT/$name" ]; then
  echo "train-and-publish: $MODELS_ROOT/$name already exists; choose another RUN_NAME" >&2
  exit 2
fi
mkdir -p "$MODELS_ROOT/runs"
bert-train \
  --corpus /app/data/wordnet.train.txt /app/data/pydocs.train.txt \
  --valid /app/data/wordnet.valid.txt /app/data/pydocs.valid.txt \
  --output-dir "$run_dir" --train.cache_dir "${CACHE_DIR:-$MODELS_ROOT/.cache}" "$@"
test -f "$run_dir/final/model.safetensors" || { echo "train-and-publish: no final checkpoint in $run_dir" >&2; exit 1; }
tmp="$MODELS_ROOT/.tmp-$name"
rm -rf "$tmp"
cp -R "$run_dir/final" "$tmp"
mv "$tmp" "$MODELS_ROOT/$name"
printf '%s\n' "$name" > "$MODELS_ROOT/.current.tmp"
mv "$MODELS_ROOT/.current.tmp" "$MODELS_ROOT/current"
echo "published $name: $MODELS_ROOT/current -> $name"
