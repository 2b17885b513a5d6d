// Shadow of CUDA's <cuda_pipeline.h> for the CPU emulator (cuda/emu): the cp.async primitives only.
#pragma once
#include "cuda_pipeline_primitives.h"
