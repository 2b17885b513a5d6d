// Shadow of CUDA's <cuda_runtime_api.h> for the CPU emulator (cuda/emu).
#pragma once
#include "cmir_emu.h"
