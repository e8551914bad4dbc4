// encoder.cu: the encoder ops of the CUDA backend (BERT / DeBERTa-v2). (being written)
#include "cuda_internal.cuh"

void cuda_install_encoder(Backend *be) { (void)be; }
