# tests/lib/run_lib.sh: what the shell tests and tools/gpu_check.sh read from a run directory (sourced, not run).
#   losses DIR         "step loss" lines of DIR/log.jsonl's train records
#   sha DIR            sha256 of DIR/adapter/adapter_model.safetensors (empty when there is none)
#   loss_diff A B      "w10 wall n": the worst relative difference of losses B against A (lines "step loss")
#                      over the first 10 common steps, over all of them, and how many there are
losses() { grep -h '"type":"train"' "$1/log.jsonl" 2>/dev/null | sed 's/.*"step":\([0-9]*\),.*"loss":\([^,]*\),.*/\1 \2/'; }
sha() { sha256sum "$1/adapter/adapter_model.safetensors" 2>/dev/null | cut -d' ' -f1; }
loss_diff() {
  join <(echo "$1") <(echo "$2") | awk '{ e = ($2 - $3) / ($3 < 0 ? -$3 : $3); if (e < 0) e = -e;
    if (NR <= 10 && e > w10) w10 = e; if (e > wall) wall = e; n++ } END { printf "%.3g %.3g %d\n", w10, wall, n }'
}
