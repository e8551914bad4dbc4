// resume.h: what of a run goes into a checkpoint and back (the file format is ckpt.h's).
//
// Saving is collective: every rank sends its partial gradients (mid-accumulation), partial loss
// and token count to rank 0, which writes <run.dir>/checkpoints/ckpt-<step>-<micro>.h5.
// Resuming reads the checkpoint on every rank, checks it against this run (model fingerprint,
// configuration keys that change the run) and restores the selection, the adapters, the head,
// AdamW's moments and step, the position (epoch, cursor, micro-step) and the counters. With the
// same number of ranks the continuation is bit-identical; with another number of ranks (elastic)
// the run continues from the same global sample cursor, restarting an interrupted step.
#ifndef ACTLORA_RESUME_H
#define ACTLORA_RESUME_H

#include <stdint.h>

#include "actlora/ckpt.h"
#include "actlora/config.h"
#include "actlora/dist.h"
#include "actlora/select.h"
#include "actlora/train.h"

typedef struct {
    int resumed;                     // 1 when this run continues a checkpoint
    char path[4200];                 // the checkpoint resumed from
    int elastic;                     // resumed on another number of ranks
    double ledger_prior[PHASE_COUNT];  // seconds x ranks before this run
    double wall_prior;               // wall seconds before this run
    uint64_t model_fingerprint;
    double t_last_save;              // wall clock of the last checkpoint (for every_minutes)
} Resume;

// Decides what to resume from (--resume auto|no|PATH; auto looks in <run.dir>/checkpoints),
// reads and verifies it, and checks it against this run; dies with the reason when a checkpoint
// was asked for and cannot be used. Returns 1 with *ck filled when resuming, 0 for a fresh start.
int resume_open(Resume *r, CkptState *ck, const CliArgs *args, const RunConfig *cfg, const Dist *d,
                uint64_t model_fingerprint);
// The selection stored in the checkpoint (calibration is not redone).
void resume_selection(const CkptState *ck, Selection *sel);
// Restores the trainable state and the position into an initialised trainer.
void resume_apply(Resume *r, const CkptState *ck, Trainer *t);
// Writes a checkpoint of the trainer now (collective). Returns 0, or -1 with err (rank 0's
// failure, shared by all ranks) — the previous checkpoints are then intact.
int resume_save(Resume *r, Trainer *t, const Selection *sel, const char *reason, Error *err);

#endif
