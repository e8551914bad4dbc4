// backend_cpu_enc.c: the encoder ops of the CPU reference backend (BERT / DeBERTa-v2).
// (being written)
#include "actlora/backend.h"

void backend_cpu_enc_init(Backend *be) { (void)be; }
