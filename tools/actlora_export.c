// actlora_export: writes the PEFT adapter directory of any checkpoint.
//   actlora_export CHECKPOINT.h5 OUT_DIR
// The LoRA settings and the base model path come from the configuration stored in the checkpoint.
#include <stdio.h>
#include <string.h>

#include "actlora/ckpt.h"
#include "actlora/config.h"
#include "actlora/export.h"

int main(int argc, char **argv) {
    if (argc != 3 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: actlora_export CHECKPOINT.h5 OUT_DIR\n"
                        "writes OUT_DIR/adapter_model.safetensors and OUT_DIR/adapter_config.json (PEFT format)\n");
        return 2;
    }
    CkptState ck;
    Error err;
    if (ckpt_read(argv[1], &ck, &err) != 0) {
        fprintf(stderr, "actlora_export: %s\n", err.msg);
        return 1;
    }
    static RunConfig cfg;
    if (config_load_text(&cfg, ck.config_text, argv[1], &err) != 0) {
        fprintf(stderr, "actlora_export: %s\n", err.msg);
        return 1;
    }
    ExportTensor t[ck.n_tensors > 0 ? ck.n_tensors : 1];
    for (int i = 0; i < ck.n_tensors; i++)
        t[i] = (ExportTensor){.name = ck.names[i], .rows = ck.shapes[i][0], .cols = ck.shapes[i][1],
                              .data = ck.params + ck.offsets[i]};
    if (export_peft(argv[2], &cfg, t, ck.n_tensors, ck.selected, ck.n_selected, &err) != 0) {
        fprintf(stderr, "actlora_export: %s\n", err.msg);
        return 1;
    }
    printf("exported %s (step %lld) to %s\n", argv[1], (long long)ck.step, argv[2]);
    ckpt_state_free(&ck);
    return 0;
}
