// ckpt.h: checkpoints that make preemption a non-event. One HDF5 file per checkpoint, written
// only by rank 0 (the caller gathers per-rank pieces first), verified on load.
//
// Write protocol (ckpt_write): the file is built in memory (HDF5 core driver), every dataset with
// HDF5's fletcher32 checksum, sealed by a 512-byte user block (format, size, whole-file checksum)
// -> written to <dir>/.ckpt-<step>-<micro>.h5.tmp.<pid> -> fsync -> rename to <dir>/ckpt-<step>-<micro>.h5 ->
// fsync(<dir>) -> <dir>/latest (the file name, one line) replaced atomically the same way ->
// older checkpoints beyond `keep` removed, never the newest valid one. A crash at any point
// leaves either the previous state or the new one, never a file that passes for valid and is not.
//
// Layout (docs/checkpoint-format.md is the reference):
//   user block (bytes 0..511): "actlora-checkpoint 1\nbytes <file size>\nfnv1a64w <hex>\n", NUL-padded
//   root attributes: format "actlora-checkpoint", format_version, config_hash, model_fingerprint,
//     world, step, epoch, cursor, micro, seed, num_layers, n_selected, n_tensors, numel, wall_s
//   /config_text (uint8 [n]): the effective configuration (config_print) of the run
//   /selection/scores float64 [L], /selection/selected int32 [n]
//   /layout/names (uint8 [total], NUL-separated), /layout/offsets int64 [n_tensors],
//   /layout/shapes int64 [n_tensors, 2]
//   /params/<PEFT name> float32 [rows, cols]   (every LoRA A/B and the head, as PEFT names them)
//   /optimizer/adam_m, /optimizer/adam_v float32 [numel] (flat, layout order)
//   /partial/grads float32 [world, numel], /partial/loss float64 [world] (only when micro > 0)
//   /counters/tokens int64 [world], /counters/ledger float64 [PHASE_COUNT] (attribute phases: names)
#ifndef ACTLORA_CKPT_H
#define ACTLORA_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "actlora/common.h"
#include "actlora/log.h"

#define CKPT_FORMAT_VERSION 1
// Exit code of a run that wrote a checkpoint because it was signalled: "checkpointed, requeue me".
#define CKPT_EXIT_REQUEUE 85

typedef struct {
    // identity and compatibility
    char *config_text;            // NUL-terminated
    uint64_t config_hash;
    uint64_t model_fingerprint;
    int world;
    // selection
    int num_layers;
    double *scores;               // [num_layers]
    int n_selected;
    int *selected;                // [n_selected]
    // trainable state: n_tensors named tensors laid out in one flat buffer of numel floats
    int n_tensors;
    char **names;                 // [n_tensors] PEFT names ("model.layers.3.self_attn.q_proj.lora_A.weight", "score.weight")
    int64_t (*shapes)[2];         // [n_tensors] rows, cols
    int64_t *offsets;             // [n_tensors] element offsets in the flat buffer
    size_t numel;
    float *params, *adam_m, *adam_v;  // [numel]
    float *grads;                 // [world * numel] partial accumulation; NULL when micro == 0
    double *loss_partial;         // [world]; NULL when micro == 0
    // position in the run
    int64_t step;                 // optimizer steps done (= AdamW's t)
    int64_t epoch, cursor;        // where the current (or next) global batch starts
    int micro;                    // micro-steps of the current step already accumulated
    uint64_t seed;                // root of every counter-based random stream
    int64_t *tokens;              // [world] real tokens trained on per rank
    double ledger[PHASE_COUNT];   // seconds x ranks per phase so far
    double wall_s;                // wall seconds so far
} CkptState;

// Writes a checkpoint of s into dir (which must exist) as described above; keep >= 1 is how
// many checkpoints to keep. path_out (optional) receives the final path. Returns -1 with err
// naming the file and the failing step (no space, permission, ...): then the previous
// checkpoints and `latest` are untouched and no temporary file is left behind.
int ckpt_write(const char *dir, const CkptState *s, int keep, char *path_out, size_t path_n, Error *err);
// Reads and fully verifies one checkpoint (format, version, every dataset's checksum, shapes
// consistent with the layout). On failure returns -1 with err saying what is wrong and s empty.
int ckpt_read(const char *path, CkptState *s, Error *err);
void ckpt_state_free(CkptState *s);

// The newest valid checkpoint of dir: the one `latest` names if it verifies, else the newest
// (by step, micro) ckpt-*.h5 that verifies. Each rejected candidate adds a line to warnings
// ("<file>: <reason>; falling back to an older checkpoint"). Returns 1 and fills path_out, 0 if
// there is none (warnings may still say why), -1 if dir cannot be read.
int ckpt_find_latest(const char *dir, char *path_out, size_t path_n, char *warnings, size_t warn_n, Error *err);

#endif
